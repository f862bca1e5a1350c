"""tail, stats, verify and replay as a user runs them, on logs with known contents;
and the log's promises under a real proxy: kill -9, SIGUSR1 reopen, tail -f."""

from __future__ import annotations

import builtins
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest
import trio

from proxy._cli import main as cli_main
from proxy._decode import decode
from proxy._framing import frame
from proxy._log import DecisionLog
from proxy._logfiles import log_files
from proxy._switch import SimulatedSwitch
from proxy._traffic import TrafficGenerator
from proxy._types import LogRecord

from .conftest import CLI, policy_text, read_log


def cli(*args: str, timeout: float = 60, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *args], capture_output=True, timeout=timeout, env=env)


def record(seq: int, *, direction="in", action="allow", mke="DQ", agency="AZ0070000",
           groups=(), rule="default", ts="2026-11-22T10:00:00.000000Z", imq=False,
           forwarded=None, pur=None, atn="SA DOE") -> LogRecord:  # fmt: skip
    ori = agency if direction == "in" else "CA0000000"
    dst = ("CA",) if direction == "in" else (agency,)
    if forwarded is None:
        forwarded = action == "allow"
    return LogRecord(ts, f"t-{seq}", seq, 1, "127.0.0.1:1", direction, "text", mke, ori, dst,
                     None, pur, None, atn, imq, agency, tuple(groups), action, rule, None,
                     "enforce", forwarded, "0" * 64, 50)  # fmt: skip


KNOWN = [
    # (count, fields)
    (50, dict(agency="VTICE0900", groups=("dhs",), action="deny", rule="no-dmv-for-dhs", mke="DQ")),
    (7, dict(agency="VTICE0900", groups=("dhs",), action="allow", mke="IQ", pur="C")),
    (7, dict(direction="out", agency="VTICE0900", groups=("dhs",), mke="IR")),
    (30, dict(agency="AZ0070000", mke="RQ")),
    (30, dict(direction="out", agency="AZ0070000", mke="RR")),
    (4, dict(agency="AZ0070000", mke="DQ", imq=True, ts="2026-11-22T11:30:00.000000Z")),
    (4, dict(direction="out", agency="AZ0070000", mke="DR", imq=True, ts="2026-11-22T11:30:00.000000Z")),
    (3, dict(agency="DCFBI0000", groups=("fed",), mke="IQ", action="deny", rule="chri-needs-purpose")),
]


@pytest.fixture
def known_log(tmp_path) -> Path:
    path = tmp_path / "known.jsonl"
    seq = 0
    with DecisionLog(path, seal_every=16, rotate_bytes=8000, fsync=False) as log:
        for count, fields in KNOWN:
            batch = []
            for _ in range(count):
                seq += 1
                batch.append(record(seq, **fields))
            log.write(batch)
        log.write([LogRecord("2026-11-22T12:00:00.000000Z", "t-r", seq + 1, 1, None, "in", None,
                             None, None, None, None, None, None, None, None, None, (), "reject",
                             "oversize", None, "enforce", False, "0" * 64, 9_999_999)])  # fmt: skip
    assert len(log_files(path)) > 2
    return path


def test_stats_counts_by_fields_with_known_answers(known_log):
    result = cli("stats", str(known_log), "--by", "group,action", "--json")
    assert result.returncode == 0, result.stderr
    got = {(r["group"], r["action"]): r["count"] for r in json.loads(result.stdout)}
    assert got == {("dhs", "deny"): 50, ("dhs", "allow"): 14, ("(no group)", "allow"): 68,
                   ("fed", "deny"): 3, ("(no group)", "reject"): 1}  # fmt: skip
    result = cli("stats", str(known_log), "--by", "hour,dir", "--csv")
    rows = result.stdout.decode().splitlines()
    assert rows[0] == "hour,dir,count"
    assert set(rows[1:]) == {"2026-11-22T10,in,90", "2026-11-22T10,out,37", "2026-11-22T11,in,4",
                             "2026-11-22T11,out,4", "2026-11-22T12,in,1"}  # fmt: skip
    # a time window
    result = cli("stats", str(known_log), "--by", "mke", "--since", "2026-11-22T11:00:00Z",
                 "--until", "2026-11-22T12:00:00Z", "--json")  # fmt: skip
    assert json.loads(result.stdout) == [{"mke": "DQ", "count": 4}, {"mke": "DR", "count": 4}]


def test_stats_disclosure_report_with_known_answers(known_log):
    result = cli("stats", str(known_log), "--json")
    rows = {r["group"]: r for r in json.loads(result.stdout)}
    dhs = rows["dhs"]
    assert (dhs["queries"], dhs["allowed"], dhs["denied"]) == (57, 7, 50)
    assert (dhs["responses_chri"], dhs["responses_dmv"]) == (7, 0)
    none = rows["(no group)"]
    assert (none["queries"], none["allowed"], none["responses_dmv"], none["responses_photo"]) == (34, 34, 34, 4)
    assert rows["fed"]["denied"] == 3
    assert rows["(unidentified: rejected)"]["queries"] == 1
    table = cli("stats", str(known_log)).stdout.decode()
    assert "Disclosure report" in table and "dhs" in table


def test_replay_with_known_answers(known_log, tmp_path):
    # Under a policy that allows everything from DHS and denies photos to anyone:
    config = tmp_path / "p.toml"
    config.write_text('[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n'
                      '[[rules]]\nid = "no-photos"\naction = "deny"\nphoto = true\ndirection = "any"\n')  # fmt: skip
    result = cli("replay", "-c", str(config), str(known_log), "--json")
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["lines"] == 136
    assert out["actions"] == {"deny->allow": 53, "allow->deny": 8, "allow->allow": 74, "reject->reject": 1}
    assert out["changed"] == 61
    table = cli("replay", "-c", str(config), str(known_log)).stdout.decode()
    assert "61 would change" in table and "no-photos" in table


def test_tail_last_lines_filters_and_formats(known_log):
    result = cli("tail", str(known_log), "-n", "3", "--json")
    lines = [json.loads(l) for l in result.stdout.splitlines()]
    assert [l["seq"] for l in lines] == [134, 135, 136]
    result = cli("tail", str(known_log), "-n", "2", "--json", "--agency", "??ICE????", "--action", "deny")
    assert [(l["seq"], l["action"]) for l in map(json.loads, result.stdout.splitlines())] == [(49, "deny"), (50, "deny")]
    result = cli("tail", str(known_log), "-n", "100", "--json", "--group", "fed")
    assert len(result.stdout.splitlines()) == 3
    result = cli("tail", str(known_log), "-n", "5", "--json", "--mke", "DR", "--dir", "out")
    assert len(result.stdout.splitlines()) == 4
    result = cli("tail", str(known_log), "-n", "1", "--json", "--rule", "chri-needs-purpose")
    assert json.loads(result.stdout)["seq"] == 135
    result = cli("tail", str(known_log), "-n", "4", "--seals", "--json")
    assert b'"seal"' in result.stdout
    # table: aligned, no colour when piped
    table = cli("tail", str(known_log), "-n", "2").stdout.decode().splitlines()
    assert table[0].startswith("time") and "\033[" not in "".join(table)
    assert table[2].index("reject") == table[1].index("deny") == table[0].index("action")


def test_tail_colours_on_a_terminal_unless_no_color(known_log):
    import pty

    def run_on_tty(env):
        pid, fd = pty.fork()
        if pid == 0:  # child
            os.execvpe(sys.executable, [*CLI, "tail", str(known_log), "-n", "60"], env)
        out = b""
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
        os.waitpid(pid, 0)
        return out

    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["TERM"] = "xterm"
    assert b"\033[31m" in run_on_tty(env)  # red deny
    assert b"\033[" not in run_on_tty({**env, "NO_COLOR": "1"})


def test_tail_stats_and_replay_leave_out_a_torn_last_line_and_say_so(known_log, tmp_path):
    """What a kill mid-write leaves, a last line without its newline, is left out
    with a note naming it, not an error: after a crash the operator needs these."""
    config = tmp_path / "p.toml"
    config.write_text('[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n')
    commands = (["tail", "-n", "3", "--json"], ["stats", "--by", "group,action", "--json"], ["stats"],
                ["replay", "-c", str(config), "--json"])  # fmt: skip
    whole = {tuple(c): cli(*c, str(known_log)) for c in commands}
    data = known_log.read_bytes()
    torn = json.dumps({"ts": "2026-11-22T12:00:01.000000Z", "id": "t-s", "seq": 138}).encode()
    known_log.write_bytes(data + torn)
    torn_line = data.count(b"\n") + 1
    note = f"{known_log}:{torn_line}: left out a last line without its newline"
    for c in commands:
        result = cli(*c, str(known_log))
        assert result.returncode == 0, (c, result.stderr)
        assert result.stdout == whole[tuple(c)].stdout, c
        assert result.stderr.decode().startswith(f"stategate: {note}"), (c, result.stderr)
    assert [json.loads(l)["seq"] for l in whole[("tail", "-n", "3", "--json")].stdout.splitlines()] == [134, 135, 136]


def test_tail_reads_backwards_across_blocks_past_a_torn_line(tmp_path, monkeypatch):
    from proxy import _tail

    monkeypatch.setattr(_tail, "BLOCK", 16)  # lines and the torn part span blocks
    path = tmp_path / "f.jsonl"
    told = []
    for body, lines, where in ((b"line-one\nline-two\nthe torn part, longer than a block", [b"line-one", b"line-two"], 3),
                               (b"only a torn line, longer than a block", [], 1),
                               (b"line-one\nline-two\n", [b"line-one", b"line-two"], None),
                               (b"", [], None)):  # fmt: skip
        path.write_bytes(body)
        told.clear()
        got = [line for _, line in _tail._backwards(path, lambda *a: told.append(a))]
        assert got[::-1] == lines, body
        assert told == ([(path, where)] if where else []), body


def test_bad_input_gives_a_clear_error(tmp_path, known_log):
    for command in (["stats"], ["verify"], ["tail"]):
        result = cli(*command, str(tmp_path / "missing.jsonl"))
        assert result.returncode != 0
        assert b"no such log" in result.stderr and b"Traceback" not in result.stderr
    with open(known_log, "ab") as f:
        f.write(b"this is not json\n")
    result = cli("stats", str(known_log))
    assert result.returncode != 0
    assert f"{known_log}:".encode() in result.stderr and b"not a decision record" in result.stderr
    assert b"Traceback" not in result.stderr
    result = cli("tail", str(known_log), "-n", "2")  # read backwards: counted from the end
    assert result.returncode != 0
    assert f"stategate: {known_log}, line 1 from the end: not a decision record".encode() in result.stderr
    result = cli("stats", str(known_log), "--by", "colour")
    assert result.returncode != 0 and b"cannot count by" in result.stderr
    result = cli("tail", str(known_log), "--since", "yesterday-ish")
    assert result.returncode != 0 and b"cannot read time" in result.stderr
    result = cli("tail", str(known_log), "-n", "-5")
    assert result.returncode == 2 and b"argument -n: not a count: '-5'" in result.stderr


def test_a_log_that_cannot_be_read_gives_a_clear_error(tmp_path, known_log, monkeypatch, capsys):
    """A directory given as the log, and a log file the user may not read (the log
    belongs to the proxy's account, an operator tails it as themselves): every log
    command says which path and why, with no traceback."""
    for command in (["stats"], ["verify"], ["tail"], ["tail", "-f"]):
        result = cli(*command, str(tmp_path), timeout=20)
        assert result.returncode != 0 and b"Traceback" not in result.stderr
        assert f"stategate: {tmp_path}: ".encode() in result.stderr
        assert b"a directory" in result.stderr or b"Is a directory" in result.stderr

    real_open = builtins.open
    newest = str(log_files(known_log)[-1])

    def denying_open(file, *args, **kwargs):
        if str(file) == newest:
            raise PermissionError(13, "Permission denied", str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", denying_open)
    replay = ["replay", "-c", str(tmp_path / "p.toml")]
    (tmp_path / "p.toml").write_text(policy_text())
    for command in (["stats"], ["verify"], ["tail"], ["tail", "-f"], replay):
        with pytest.raises(SystemExit) as exit_:
            cli_main([*command, str(known_log)])
        assert exit_.value.code == 2
        assert f"stategate: {newest}: " in capsys.readouterr().err


def test_verify_command_exit_codes(known_log):
    result = cli("verify", str(known_log))
    assert result.returncode == 0 and result.stdout.startswith(b"OK: 136 lines")
    assert b"torn" not in result.stdout
    files = log_files(known_log)
    # a torn last line, as a kill mid-write leaves it: named, and not a break
    whole = files[-1].read_bytes()
    files[-1].write_bytes(whole + whole.splitlines(keepends=True)[0][:40])
    result = cli("verify", str(known_log))
    newest_line = whole.count(b"\n") + 1
    assert result.returncode == 0 and result.stdout.startswith(b"OK: 136 lines"), result.stdout
    assert f"torn: the last line, {files[-1]}:{newest_line}, ends without a newline".encode() in result.stdout
    files[-1].write_bytes(whole)
    lines = files[1].read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"allow"', b'"deny"').replace(b'"deny"', b'"allow"', 0)
    lines[1] = lines[1].replace(b'"forwarded":true', b'"forwarded":false')
    files[1].write_bytes(b"".join(lines))
    result = cli("verify", str(known_log))
    assert result.returncode == 1
    assert f"BROKEN at {files[1]}:".encode() in result.stdout


# --------------------------------------------------------- with a real proxy


def _write_config(tmp_path: Path, upstream_port: int, listen_port: int, **log) -> Path:
    log_path = tmp_path / "log" / "decisions.jsonl"
    extra = "".join(f"{k} = {v}\n" for k, v in log.items())
    config = tmp_path / "stategate.toml"
    config.write_text(f'[proxy]\nlisten = "127.0.0.1:{listen_port}"\nupstream = "127.0.0.1:{upstream_port}"\n'
                      f'[log]\npath = "{log_path}"\n{extra}' + policy_text())  # fmt: skip
    return config


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _start(config: Path, port: int) -> trio.Process:
    proc = await trio.lowlevel.open_process([*CLI, "run", "-c", str(config)], stderr=subprocess.DEVNULL)
    with trio.fail_after(20):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
                await s.aclose()
                return proc
            except OSError:
                await trio.sleep(0.05)


async def test_kill_9_under_load_loses_no_forwarded_line(tmp_path):
    switch = SimulatedSwitch(answer=False)
    gen = TrafficGenerator(11, dhs_share=0.1, malformed_share=0.02)
    port = _free_port()
    async with trio.open_nursery() as nursery:
        up = await nursery.start(switch.run)
        config = _write_config(tmp_path, up, port, seal_every=50, fsync="false")
        proc = await _start(config, port)
        sent = 0

        async def load(conn: int) -> None:
            nonlocal sent
            stream = await trio.open_tcp_stream("127.0.0.1", port)
            try:
                while True:
                    batch = [g.payload for g in gen.queries(20)]
                    await stream.send_all(b"".join(frame(p, "len32") for p in batch))
                    sent += len(batch)
                    await trio.sleep(0)
            except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                pass

        async with trio.open_nursery() as clients:
            for c in range(4):
                clients.start_soon(load, c)
            with trio.fail_after(30):
                while len(switch.received) < 3000:
                    await trio.sleep(0.01)
            proc.kill()  # SIGKILL, mid-stream
            await proc.wait()
            await trio.sleep(0.3)
            clients.cancel_scope.cancel()
        nursery.cancel_scope.cancel()
    log_path = tmp_path / "log" / "decisions.jsonl"
    # SIGKILL can land inside a write and leave part of the last line: its message
    # was not forwarded (that waits for the write), and a restart drops the part.
    log = read_log(log_path, torn_tail=True)
    logged_forwarded = Counter((r["mke"], r["ori"], r["ctl"], r["bytes"])
                               for r in log if r["forwarded"] and r["dir"] == "in")  # fmt: skip
    received = Counter()
    for raw in switch.received:
        m = decode(raw[4:])
        received[(m.mke, m.ori, m.ctl, len(raw) - 4)] += 1
    assert len(switch.received) >= 3000
    # Every message the upstream received has its own line in the log, marked
    # forwarded: key, ORI, control field (unique per generated message) and size.
    assert not (received - logged_forwarded)
    # The log survived intact: the sealed part verifies; lines after the last seal
    # are reported as unsealed, and a torn last line as torn, neither as a break.
    result = cli("verify", str(log_path))
    assert result.returncode == 0, result.stdout
    data = log_path.read_bytes()
    if not data.endswith(b"\n"):
        torn_line = data.count(b"\n") + 1
        torn = f"torn: the last line, {log_path}:{torn_line}, ends without a newline"
        assert torn.encode() in result.stdout, result.stdout
    else:
        assert b"torn" not in result.stdout, result.stdout
    # and a restarted proxy continues the chain
    proc = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.DEVNULL)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=15) == 0
    result = cli("verify", str(log_path))
    assert result.returncode == 0 and b"unsealed" not in result.stdout, result.stdout


async def test_external_rotation_with_sigusr1_and_tail_f_following(tmp_path):
    switch = SimulatedSwitch(answer=False)
    port = _free_port()
    log_path = tmp_path / "log" / "decisions.jsonl"
    async with trio.open_nursery() as nursery:
        up = await nursery.start(switch.run)
        config = _write_config(tmp_path, up, port, seal_every=5, rotate_bytes=6000)
        proc = await _start(config, port)
        # SIGINT reset to its default in the child: a suite started in the background by
        # a non-interactive shell inherits SIGINT ignored, and Python then never raises
        # KeyboardInterrupt, so `tail -f` would rightly ignore the SIGINT below.
        tail = await trio.lowlevel.open_process(
            [*CLI, "tail", str(log_path), "-f", "-n", "0", "--json"], stdout=subprocess.PIPE,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        await trio.sleep(0.5)
        stream = await trio.open_tcp_stream("127.0.0.1", port)
        q = lambda i: f"RQ.AZ{i:07d}.CA.TXT\nLIC/ZZ{i:05d}".encode()  # noqa: E731

        async def send(lo: int, hi: int) -> None:
            for i in range(lo, hi):
                await stream.send_all(frame(q(i), "len32"))
                await trio.sleep(0.002)

        await send(0, 40)  # enough to rotate in process (6000 bytes)
        with trio.fail_after(10):
            while len(switch.received) < 40:
                await trio.sleep(0.01)
        # External rotation, logrotate style: rename, then SIGUSR1.
        os.rename(log_path, tmp_path / "log" / "decisions.jsonl.99")
        proc.send_signal(signal.SIGUSR1)
        await trio.sleep(0.5)
        await send(40, 60)
        with trio.fail_after(10):
            while len(switch.received) < 60:
                await trio.sleep(0.01)
        await trio.sleep(1.0)  # tail polls
        proc.send_signal(signal.SIGTERM)
        with trio.fail_after(15):
            assert await proc.wait() == 0
        await trio.sleep(0.6)
        tail.send_signal(signal.SIGINT)
        data = b""
        with trio.fail_after(10):
            while chunk := await tail.stdout.receive_some(65536):
                data += chunk
        await stream.aclose()
        nursery.cancel_scope.cancel()
    followed = [json.loads(l) for l in data.splitlines()]
    assert [r["seq"] for r in followed] == list(range(1, 61))  # through both rotations
    files = log_files(log_path)
    assert len(files) >= 3
    assert any(f.name == "decisions.jsonl.99" for f in files)
    result = cli("verify", str(log_path))
    assert result.returncode == 0 and b"OK: 60 lines" in result.stdout, result.stdout


async def test_rotation_under_concurrent_load_loses_no_line(tmp_path):
    from proxy._config import parse_config
    from proxy._fastmatch import Matcher
    from proxy._policy import compile_policy
    from proxy._server import Proxy

    switch = SimulatedSwitch()
    log_path = tmp_path / "d.jsonl"
    async with trio.open_nursery() as nursery:
        up = await nursery.start(switch.run)
        config = parse_config(f'[proxy]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:{up}"\n' + policy_text())
        with DecisionLog(log_path, seal_every=37, rotate_bytes=20_000, fsync=False) as log:
            proxy = Proxy(config, Matcher(compile_policy(config)), log)
            await nursery.start(proxy.run)

            async def client(seed: int) -> None:
                gen = TrafficGenerator(seed, malformed_share=0.02)
                stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
                async with stream:
                    for _ in range(10):
                        await stream.send_all(b"".join(frame(g.payload, "len32") for g in gen.queries(50)))
                        await trio.sleep(0.001)
                    await trio.sleep(0.5)

            async with trio.open_nursery() as clients:
                for seed in range(8):
                    clients.start_soon(client, seed)
            proxy.stop()
        nursery.cancel_scope.cancel()
    files = log_files(log_path)
    assert len(files) > 20
    seqs = [json.loads(l)["seq"] for f in files for l in f.read_bytes().splitlines() if b'"seq"' in l]
    assert seqs == list(range(1, len(seqs) + 1))
    assert sum(1 for s in seqs) == 8 * 500 + switch.responses_sent
    assert cli("verify", str(log_path)).returncode == 0


class Following:
    """follow() on a path in a thread, as `tail -f --json` runs it: ``seen`` holds the
    seq of each line it prints.  A context manager: stops it and waits for it."""

    def __init__(self, path: Path) -> None:
        import threading

        from proxy._query import Query
        from proxy._tail import Printer, follow

        self.seen: list[int] = []
        self._stop = threading.Event()
        printer = Printer(Query(), as_json=True, seals=False, out=self)
        self._thread = threading.Thread(target=follow, args=(path,), kwargs=dict(printer=printer, stop=self._stop.is_set))

    def write(self, text: str) -> None:  # the printer's output stream
        self.seen.extend(json.loads(line)["seq"] for line in text.splitlines())

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def wait_for(self, n: int) -> None:
        deadline = time.monotonic() + 10
        while len(self.seen) < n and time.monotonic() < deadline:
            time.sleep(0.02)

    def __enter__(self) -> Following:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive()


def test_tail_follows_through_truncation_and_rotation_in_process(tmp_path):
    """follow() itself, driven step by step: appended lines, a truncation in place
    seen empty, one written past where the follower had read before it polls again
    (logrotate's copytruncate on a busy log: the file does not look shorter), a
    rotation by rename, and several rotations between two polls."""
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=3, rotate_bytes=10**9, fsync=False)
    try:
        with Following(path) as follower:
            time.sleep(0.3)
            log.write([record(1), record(2)])
            follower.wait_for(2)
            # truncated in place (copytruncate style), then written again from the start
            os.truncate(path, 0)
            log._size = 0
            time.sleep(0.5)
            log.write([record(3)])
            follower.wait_for(3)
            # truncated, and written past the old end at once: read from the start,
            # not on from the middle of the new file
            os.truncate(path, 0)
            log._size = 0
            log.write([record(s) for s in range(4, 8)])
            follower.wait_for(7)
            # several in-process rotations before the follower polls again
            log.rotate_bytes = 400
            for s in range(8, 14):
                log.write([record(s)])
            follower.wait_for(13)
    finally:
        log.close()
    assert follower.seen == list(range(1, 14))


@pytest.mark.parametrize("cut", ["written on at once", "cut seen first", "the line finished"])
def test_tail_follow_through_a_torn_line_cut_by_a_restart(tmp_path, cut):
    """A follower started while a line is half written starts at that line. When the
    line is finished it is printed once. When a proxy restarted after a kill cuts the
    torn line off and writes on, the follower reads on from the cut, whether or not
    it saw the file shrink, instead of joining the torn part to the new lines."""
    path = tmp_path / "d.jsonl"
    lines = [msgspec.json.encode(record(s, atn="SA DOE" * s)) + b"\n" for s in (1, 2, 3, 4)]
    torn = lines[1][:-20]
    path.write_bytes(lines[0] + torn)
    with Following(path) as follower:
        time.sleep(0.5)  # the follower has read the partial line
        if cut == "the line finished":
            with open(path, "ab") as f:
                f.write(lines[1][len(torn) :] + lines[2])
            expected = [2, 3]
        else:
            os.truncate(path, len(lines[0]))
            if cut == "cut seen first":
                time.sleep(0.5)
            with open(path, "ab") as f:
                f.write(lines[2] + lines[3])
            expected = [3, 4]
        follower.wait_for(2)
        time.sleep(0.3)  # nothing more comes
    assert follower.seen == expected
