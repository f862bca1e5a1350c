"""Shared helpers: a policy builder and an in-process proxy on loopback."""

from __future__ import annotations

import contextlib
import socket
import ssl
import sys
import time
from pathlib import Path

import msgspec
import pytest
import trio
from proxy._fastmatch import Matcher

from proxy._config import parse_config
from proxy._framing import frame, make_framer
from proxy._log import DecisionLog
from proxy._policy import compile_policy
from proxy._server import Proxy
from proxy._switch import SimulatedSwitch

BASE_POLICY = """
[policy]
state = "CA"
local_ori = "CA0000000"
default = "allow"
mode = "{mode}"

[groups.dhs]
ori = ["VTICE0900", "??ICE????", "??HSI????"]

[[rules]]
id = "watch-dmv"
action = "deny"
mke = ["@dmv"]
attention = "missing"
shadow = true
why = "watching"

[[rules]]
id = "no-dmv-for-dhs"
action = "deny"
agency = ["@dhs"]
mke = ["@dmv"]
why = "State law bars sharing DMV data with immigration enforcement"

[[rules]]
id = "no-dmv-out-to-dhs"
action = "deny"
direction = "out"
agency = ["@dhs"]
mke = ["@dmv"]
why = "no DMV responses to DHS"

[[rules]]
id = "chri-needs-purpose"
action = "deny"
mke = ["@chri"]
purpose = ["none"]
why = "purpose required"
"""


CLI = [sys.executable, "-m", "proxy"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def connect(port: int, deadline: float) -> socket.socket:
    """Connect to a process still starting up, retrying until ``deadline``."""
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=5)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def policy_text(mode: str = "enforce", extra: str = "") -> str:
    return BASE_POLICY.format(mode=mode) + extra


def make_policy(text: str):
    return compile_policy(parse_config(text, "test.toml"), "test.toml")


def read_log(path: Path, seals: bool = False, torn_tail: bool = False) -> list[dict]:
    """Decision lines of one log file (seal records too when asked).  ``torn_tail``:
    the file may end in part of a line (a process killed inside a write), left out."""
    if not path.exists():
        return []
    data = path.read_bytes()
    if torn_tail and not data.endswith(b"\n"):
        data = data[: data.rfind(b"\n") + 1]
    lines = [msgspec.json.decode(line) for line in data.splitlines() if line]
    return lines if seals else [r for r in lines if "seal" not in r]


async def eof_within(stream: trio.abc.Stream, seconds: float) -> bool:
    """True if the peer closes within ``seconds`` (data before the close is ignored)."""
    with trio.move_on_after(seconds):
        try:
            while await stream.receive_some(65536):
                pass
        except trio.BrokenResourceError:
            pass
        return True
    return False


async def http_get(port: int, path: str, method: str = "GET") -> tuple[int, bytes]:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class Client:
    """A test peer on the Nlets side: sends frames, collects what comes back."""

    def __init__(self, stream: trio.abc.Stream, framing: str, terminator: bytes) -> None:
        self.stream = stream
        self.framing = framing
        self.terminator = terminator
        self.framer = make_framer(framing, 1 << 24, terminator)
        self.frames: list[bytes] = []

    async def send(self, *payloads: bytes) -> None:
        await self.stream.send_all(b"".join(frame(p, self.framing, self.terminator) for p in payloads))

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def receive(self, count: int, timeout: float = 5.0) -> list[bytes]:
        """Wait until ``count`` payloads in all have arrived; return them."""
        with trio.move_on_after(timeout):
            while len(self.frames) < count:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.frames.extend(ev[1] for ev in self.framer.feed(data) if ev[0] == "frame")
        return self.frames

    async def quiet(self, seconds: float = 0.3) -> list[bytes]:
        """Collect whatever arrives within ``seconds``."""
        with trio.move_on_after(seconds):
            while True:
                data = await self.stream.receive_some(65536)
                if not data:
                    break
                self.frames.extend(ev[1] for ev in self.framer.feed(data) if ev[0] == "frame")
        return self.frames


class Harness:
    def __init__(self, proxy: Proxy, switch: SimulatedSwitch, log_path: Path, framing: str,
                 terminator: bytes) -> None:  # fmt: skip
        self.proxy = proxy
        self.switch = switch
        self.log_path = log_path
        self.framing = framing
        self.terminator = terminator

    @contextlib.asynccontextmanager
    async def client(self, tls: ssl.SSLContext | None = None):
        """A connection to the proxy; over TLS with ``tls`` (a client context)."""
        stream: trio.abc.Stream = await trio.open_tcp_stream("127.0.0.1", self.proxy.port)
        if tls is not None:
            stream = trio.SSLStream(stream, tls, server_hostname="localhost")
        async with stream:
            yield Client(stream, self.framing, self.terminator)

    def log(self) -> list[dict]:
        return read_log(self.log_path)

    async def wait_log(self, count: int, timeout: float = 5.0) -> list[dict]:
        with trio.move_on_after(timeout):
            while len(self.log()) < count:
                await trio.sleep(0.01)
        return self.log()


@contextlib.asynccontextmanager
async def running_proxy(tmp_path: Path, text: str, *, framing: str = "len32",
                        answer: bool = True, proxy_extra: str = "", upstream_port: int | None = None,
                        log_path: Path | None = None, config_path: str | None = None,
                        warnings: list[str] | None = None,
                        switch_tls: ssl.SSLContext | None = None):  # fmt: skip
    """Switch and proxy (with its admin endpoint) on loopback with ephemeral ports.
    ``upstream_port`` points the proxy at another upstream instead of the switch;
    ``switch_tls`` makes the switch serve TLS."""
    terminator = b"\r\n\x7f"
    switch = SimulatedSwitch(framing=framing, terminator=terminator, answer=answer, tls=switch_tls)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(switch.run)
        full = (
            f'[proxy]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:{upstream_port or port}"\n'
            f'framing = "{framing}"\n{proxy_extra}\n[admin]\nlisten = "127.0.0.1:0"\n' + text
        )
        config = parse_config(full, "test.toml")
        log_path = log_path or tmp_path / "decisions.jsonl"
        warn = warnings.append if warnings is not None else (lambda m: None)
        with DecisionLog(log_path, fsync=False, warn=warn) as log:
            proxy = Proxy(config, Matcher(compile_policy(config)), log, admin=True,
                          config_path=config_path, warn=warn)  # fmt: skip
            await nursery.start(proxy.run)
            try:
                yield Harness(proxy, switch, log_path, framing, terminator)
            finally:
                proxy.stop()
                nursery.cancel_scope.cancel()


@pytest.fixture
def policy():
    return make_policy(policy_text())
