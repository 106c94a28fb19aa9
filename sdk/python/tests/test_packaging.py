"""`pip install ./sdk/python` into a fresh virtualenv: the package installs
with its two dependencies only, is typed (py.typed), and imports without
any agent framework installed."""

import subprocess
import sys
import venv

from conftest import ROOT


def test_pip_install_into_a_fresh_virtualenv(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                    str(ROOT / "sdk" / "python")], check=True, timeout=600)
    code = (
        "import importlib.metadata as m, importlib.resources as r, secondkey, secondkey.integrations;"
        "assert secondkey.__version__ == m.version('secondkey');"
        "assert r.files('secondkey').joinpath('py.typed').is_file();"
        "base = sorted(r.split('>')[0].split('<')[0] for r in m.requires('secondkey') if 'extra ==' not in r);"
        "assert base == ['cryptography', 'httpx'], base;"
        "import importlib.util as u; assert u.find_spec('langchain_core') is None;"
        "print(secondkey.digest({'b': 1, 'a': [1.5, 'x']}))"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    import secondkey

    assert out.stdout.strip() == secondkey.digest({"a": [1.5, "x"], "b": 1})
    assert sys.executable != str(py)
