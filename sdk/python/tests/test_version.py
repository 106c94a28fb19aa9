"""The SDKs follow the gateway's version (the workspace Cargo.toml)."""

import json
import re
import tomllib

import secondkey
from conftest import ROOT


def test_versions_agree_with_the_gateway():
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]["version"]
    pyproject = tomllib.loads((ROOT / "sdk" / "python" / "pyproject.toml").read_text())["project"]["version"]
    npm = json.loads((ROOT / "sdk" / "typescript" / "package.json").read_text())["version"]
    js = re.search(r"VERSION = '([^']+)'", (ROOT / "sdk" / "typescript" / "src" / "version.js").read_text()).group(1)
    assert secondkey.__version__ == pyproject == npm == js == cargo
