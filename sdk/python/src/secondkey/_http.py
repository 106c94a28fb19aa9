"""What both clients share: configuration, building requests, reading answers."""

from __future__ import annotations

import ipaddress
import json
import os
import re
from typing import Any, Optional

import httpx

from . import models as m
from ._ops import Call
from ._version import __version__
from .errors import GatewayTimeout, ProtocolError, TransportError, error_from_response

#: The longest ``?wait=`` a long-poll asks for; the gateway clamps it too.
MAX_POLL_SECONDS = 60
#: Longest answer body read (the gateway's answers are far smaller).
MAX_ANSWER_BYTES = 16 * 1024 * 1024


def _loopback(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_url(url: str, allow_insecure_http: bool) -> None:
    """Refuses plain ``http://`` to a host off loopback: the bearer token would travel in clear."""
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as e:
        hide = lambda text: re.sub(r"//[^/@]*@", "//…@", text)  # noqa: E731
        raise ValueError(f"the gateway URL {hide(url)!r} is not a URL: {hide(str(e))}") from None
    if parsed.scheme != "http" or _loopback(parsed.host) or allow_insecure_http:
        return
    raise ValueError(
        f"refusing the gateway URL http://{parsed.netloc.decode('ascii', 'replace')}: plain HTTP to a host that is not loopback would send "
        "the bearer token in clear; use https://, or opt in on a network you trust with "
        "allow_insecure_http=True or SECONDKEY_ALLOW_INSECURE_HTTP=1"
    )


class Settings:
    def __init__(self, url: Optional[str], token: Optional[str], timeout: float, allow_insecure_http: bool = False):
        url = url or os.environ.get("SECONDKEY_URL") or "http://127.0.0.1:8750"
        allow = allow_insecure_http or os.environ.get("SECONDKEY_ALLOW_INSECURE_HTTP") == "1"
        check_url(url, allow)
        self.url = url.rstrip("/")
        self.token = token if token is not None else os.environ.get("SECONDKEY_TOKEN")
        self.timeout = timeout

    def headers(self, call: Call) -> dict[str, str]:
        h = {"User-Agent": f"secondkey-python/{__version__}", "Accept": "application/json"}
        if call.body is not None:
            h["Content-Type"] = "application/json"
        if self.token and not call.spec.public:
            h["Authorization"] = f"Bearer {self.token}"
        return h


def transport_error(e: Exception, url: str) -> Exception:
    if isinstance(e, httpx.TimeoutException):
        return GatewayTimeout(f"the gateway at {url} did not answer in time ({type(e).__name__})")
    return TransportError(f"cannot reach the gateway at {url}: {e}")


def check_size(body: bytearray) -> None:
    """A hostile or broken gateway cannot make the client hold an unbounded answer."""
    if len(body) > MAX_ANSWER_BYTES:
        raise ProtocolError(f"the gateway's answer is larger than {MAX_ANSWER_BYTES} bytes; refused")


def read_answer(call: Call, status: int, headers: httpx.Headers, content: bytes) -> Any:
    """Raises the typed error for an error status; parses a success answer."""
    spec = call.spec
    if status >= 400:
        raise error_from_response(status, content, headers.get("retry-after"))
    if status != spec.status:
        raise ProtocolError(f"{spec.method} {spec.path}: expected {spec.status}, the gateway answered {status}")
    answer = spec.answer
    if answer == "none":
        return None
    if answer == "bytes":
        return content
    if answer == "text":
        try:
            return content.decode("utf-8")
        except UnicodeDecodeError:
            raise ProtocolError(f"{spec.path}: the answer is not UTF-8 text") from None
    try:
        data = json.loads(content)
    except ValueError:
        raise ProtocolError(f"{spec.method} {spec.path}: the answer is not JSON: {content[:120]!r}") from None
    if answer == "json":
        return data
    if isinstance(answer, tuple):
        _, cls = answer
        if not isinstance(data, list):
            raise ProtocolError(f"{spec.path}: expected an array")
        items: list[Any] = [m.parse(cls, x, f"{spec.path}[{i}]") for i, x in enumerate(data)]
        if call.op == "list_requests":
            return m.RequestPage(items, headers.get("x-next-before"))
        return items
    return m.parse(answer, data, spec.path)  # type: ignore[arg-type]


class LineSplitter:
    """Splits streamed text into lines (LF or CRLF), refusing a line over the answer limit."""

    def __init__(self) -> None:
        self.buf = ""

    def feed(self, chunk: str) -> list[str]:
        self.buf += chunk
        *lines, self.buf = self.buf.split("\n")
        if len(self.buf) > MAX_ANSWER_BYTES:
            raise ProtocolError("an event stream line is longer than the answer limit; refused")
        return [line[:-1] if line.endswith("\r") else line for line in lines]


class SseParser:
    """Incremental ``text/event-stream`` parser (WHATWG HTML §9.2): lines in, events out."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []

    def feed(self, line: str) -> Optional[tuple[str, str]]:
        if line == "":
            if not self.data:
                self.event = ""
                return None
            out = (self.event or "message", "\n".join(self.data))
            self.event, self.data = "", []
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        return None


def state_event(data: str) -> m.RequestView:
    try:
        return m.parse(m.RequestView, json.loads(data), "event")
    except ValueError:
        raise ProtocolError(f"an event's data is not JSON: {data[:120]!r}") from None
