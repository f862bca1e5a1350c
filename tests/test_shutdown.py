"""Shutdown of a real `stategate run` process under traffic (issue 5, SPEC section 6):
SIGTERM/SIGINT stop accepting, finish the frames in flight, seal the log and exit 0;
a second signal exits at once."""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from proxy._framing import make_framer
from proxy._server import SEND_GRACE
from proxy._traffic import TrafficGenerator, framed_stream

from .conftest import CLI, connect, free_port, policy_text, read_log


class RecordingUpstream:
    """A bare upstream in a thread: accepts, and either records every frame or,
    with ``read=False``, never reads (so the proxy's sends to it block)."""

    def __init__(self, read: bool = True) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.read = read
        self.frames: list[bytes] = []
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            conn, _ = self.sock.accept()
        except OSError:
            return
        self.conns.append(conn)
        if not self.read:
            return
        framer = make_framer("len32", 1 << 24, b"")
        while data := conn.recv(65536):
            self.frames.extend(ev[2] for ev in framer.feed(data) if ev[0] == "frame")

    def close(self) -> None:
        for c in [self.sock, *self.conns]:
            c.close()


@contextlib.contextmanager
def proxy_process(tmp_path: Path, *, read: bool = True):
    """`stategate run` before a RecordingUpstream; yields (process, listen port, log
    path, upstream), and kills what is left at the end."""
    upstream = RecordingUpstream(read=read)
    listen = free_port()
    log_path = tmp_path / "decisions.jsonl"
    config = tmp_path / "stategate.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen}"\nupstream = "127.0.0.1:{upstream.port}"\n'
        f'[log]\npath = "{log_path}"\n' + policy_text()
    )
    proc = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE)
    try:
        yield proc, listen, log_path, upstream
    finally:
        if proc.poll() is None:
            proc.kill()
        upstream.close()


def verify(log_path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, "verify", str(log_path)], capture_output=True, timeout=60)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_under_traffic_finishes_frames_seals_and_exits_0(tmp_path, signum):
    with proxy_process(tmp_path) as (proc, listen, log_path, upstream):
        client = connect(listen, time.monotonic() + 15)
        chunk = framed_stream(list(TrafficGenerator(seed=7).queries(500)), "len32", b"")
        stop = threading.Event()

        def flood() -> None:
            try:
                while not stop.is_set():
                    client.sendall(chunk)
            except OSError:
                pass  # the proxy closed the connection

        def drain() -> None:
            try:
                while client.recv(65536):
                    pass
            except OSError:
                pass

        threads = [threading.Thread(target=flood, daemon=True), threading.Thread(target=drain, daemon=True)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 15
        while len(upstream.frames) < 2000 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(upstream.frames) >= 2000
        proc.send_signal(signum)
        assert proc.wait(timeout=20) == 0
        stop.set()
        upstream.thread.join(timeout=10)
        err = proc.stderr.read().decode()
        assert "stopping" in err and "Traceback" not in err
        # No new connections after the stop.
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", listen), timeout=2).recv(1)

        # The log is whole and sealed to its last line; every frame the upstream
        # received has its line, in order, and nothing forwarded is missing there.
        result = verify(log_path)
        assert result.returncode == 0, result.stdout + result.stderr
        assert b"unsealed" not in result.stdout
        log = read_log(log_path)
        forwarded = [r for r in log if r["dir"] == "in" and r["forwarded"]]
        assert len(forwarded) == len(upstream.frames)
        assert [r["bytes"] for r in forwarded] == [len(f) - 4 for f in upstream.frames]


def stick_a_send(listen: int) -> socket.socket:
    """Connect and send until the proxy's send to a non-reading upstream blocks."""
    client = connect(listen, time.monotonic() + 15)
    client.settimeout(0.5)
    chunk = framed_stream(list(TrafficGenerator(seed=3).queries(2000)), "len32", b"")
    sent = 0
    while True:
        try:
            sent += client.send(chunk)
        except TimeoutError:
            return client
        if sent > 256 << 20:
            pytest.fail("the proxy buffered without bound")


def test_a_stuck_send_gets_its_grace_then_the_proxy_exits_0(tmp_path):
    with proxy_process(tmp_path, read=False) as (proc, listen, log_path, upstream):
        stick_a_send(listen)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=SEND_GRACE + 15) == 0
        err = proc.stderr.read().decode()
        assert "closed before a send of" in err and "Traceback" not in err
        result = verify(log_path)
        assert result.returncode == 0 and b"unsealed" not in result.stdout, result.stdout + result.stderr


def test_second_signal_exits_at_once_while_a_send_is_stuck(tmp_path):
    with proxy_process(tmp_path, read=False) as (proc, listen, log_path, upstream):
        stick_a_send(listen)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        assert proc.poll() is None  # the first signal waits for the stuck send
        proc.send_signal(signal.SIGTERM)
        # 1, not the graceful 0: the second signal ended it, not the grace period.
        assert proc.wait(timeout=SEND_GRACE - 1) == 1
        assert "second signal" in proc.stderr.read().decode()
        # What was logged is whole lines (an unsealed tail, not a broken seal).
        result = verify(log_path)
        assert result.returncode == 0, result.stdout + result.stderr
