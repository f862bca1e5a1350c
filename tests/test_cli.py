"""The command line, run as a user would: real processes, real files, loopback."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest

from proxy._demo import EXAMPLE_POLICY
from proxy._framing import frame

from .conftest import CLI, connect, free_port, policy_text, read_log


def run(*args: str, input: bytes | None = None, cwd: Path | None = None, timeout: float = 60):
    return subprocess.run([*CLI, *args], input=input, capture_output=True, timeout=timeout, cwd=cwd)


@pytest.mark.parametrize("command", ["run", "check", "decide", "demo"])
def test_every_command_has_help(command):
    result = run(command, "--help")
    assert result.returncode == 0
    assert b"usage: stategate " + command.encode() in result.stdout


def test_check_prints_the_policy_and_says_the_matcher_is_compiled():
    result = run("check", "-c", str(EXAMPLE_POLICY))
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "matcher: compiled" in out
    assert "@dhs_immigration: VTICE0900, ??ICE????, ??HSI????" in out
    rules = [line.split(":")[0].strip() for line in out.splitlines() if line.startswith("  ") and ": " in line and "when" in line]
    assert rules == ["no-dmv-for-immigration", "no-photos-for-immigration",
                     "no-dmv-responses-to-immigration", "watch-chri-without-requester",
                     "chri-needs-purpose"]  # fmt: skip


def test_check_rejects_a_bad_config_without_a_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text(policy_text() + '[[rules]]\nid = "x"\naction = "deny"\nagency = ["@nope"]\n')
    result = run("check", "-c", str(bad))
    assert result.returncode != 0
    err = result.stderr.decode()
    assert str(bad) in err and "@nope" in err and "agency" in err
    assert "Traceback" not in err
    result = run("check", "-c", str(tmp_path / "missing.toml"))
    assert result.returncode != 0 and "cannot read" in result.stderr.decode()


def test_missing_extension_is_a_loud_error():
    code = (
        "import sys; sys.modules['proxy._fastmatch'] = None\n"
        "from proxy._cli import main\n"
        f"raise SystemExit(main(['check', '-c', {str(EXAMPLE_POLICY)!r}]))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
    assert result.returncode != 0
    assert b"compiled matcher proxy._fastmatch is missing" in result.stderr


def test_decide_prints_the_log_line(tmp_path):
    msgfile = tmp_path / "q.txt"
    msgfile.write_bytes(b"DQ.VTICE0900.CA.*X1.TXT\nOLN/S1234567.IMQ/Y\n")
    result = run("decide", "-c", str(EXAMPLE_POLICY), str(msgfile))
    assert result.returncode == 0, result.stderr
    rec = msgspec.json.decode(result.stdout)
    assert (rec["action"], rec["rule"], rec["ctl"], rec["imq"], rec["groups"]) == (
        "deny", "no-dmv-for-immigration", "X1", True, ["dhs_immigration"])
    assert b"S1234567" not in result.stdout
    # stdin, and an out message
    result = run("decide", "-c", str(EXAMPLE_POLICY), "--dir", "out",
                 input=b'{"mke":"DR","ori":"CA0000000","dst":["TXICE0300"]}')  # fmt: skip
    rec = msgspec.json.decode(result.stdout)
    assert (rec["dir"], rec["agency"], rec["rule"]) == ("out", "TXICE0300", "no-dmv-responses-to-immigration")
    result = run("decide", "-c", str(EXAMPLE_POLICY), input=b"garbage")
    assert msgspec.json.decode(result.stdout)["rule"] == "malformed"


def test_run_serves_reloads_on_sighup_and_exits_0_on_sigterm(tmp_path):
    # A bare upstream that accepts and records.
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen()
    listen_port = free_port()
    log_path = tmp_path / "log" / "decisions.jsonl"
    config = tmp_path / "stategate.toml"
    body = policy_text()
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen_port}"\nupstream = "127.0.0.1:{upstream.getsockname()[1]}"\n'
        f'[log]\npath = "{log_path}"\n' + body
    )
    proc = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE)
    try:
        client = connect(listen_port, time.monotonic() + 15)
        up, _ = upstream.accept()
        up.settimeout(5)
        q = b"RQ.AZ0070000.CA.TXT\nLIC/ZZ12345"
        client.sendall(frame(q, "len32"))
        assert up.recv(1000) == frame(q, "len32")
        rev1 = read_log(log_path)[0]["rev"]

        # A bad file on SIGHUP keeps the running policy.
        config.write_text(config.read_text() + "nonsense = 1\n")
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        client.sendall(frame(q, "len32"))
        assert up.recv(1000) == frame(q, "len32")
        assert read_log(log_path)[1]["rev"] == rev1

        # A good one takes effect for the next chunk: now RQ from AZ is denied.
        config.write_text(config.read_text().replace("nonsense = 1\n", "").replace(
            'default = "allow"', 'default = "deny"'))  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.3)
        client.sendall(frame(q, "len32"))
        client.settimeout(5)
        er = client.recv(10_000)
        assert b"ER.CA0000000.AZ0070000" in er
        third = read_log(log_path)[2]
        assert third["rev"] != rev1 and (third["action"], third["rule"]) == ("deny", "default")

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        err = proc.stderr.read().decode()
        assert "reload refused" in err and "policy reloaded" in err
    finally:
        if proc.poll() is None:
            proc.kill()
        upstream.close()


def test_run_without_upstream_is_a_clear_error(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(policy_text())
    result = run("run", "-c", str(config))
    assert result.returncode != 0
    assert b"proxy.upstream" in result.stderr and b"Traceback" not in result.stderr


def run_proxy(tmp_path: Path, *, listen: int, admin: int, log: Path) -> subprocess.CompletedProcess:
    """``stategate run`` on loopback ports with the test policy, until it exits."""
    config = tmp_path / "c.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{listen}"\nupstream = "127.0.0.1:{free_port()}"\n'
        f'[log]\npath = "{log}"\n[admin]\nlisten = "127.0.0.1:{admin}"\n' + policy_text()
    )
    return run("run", "-c", str(config), timeout=30)


def test_run_with_a_log_path_it_cannot_make_names_the_path(tmp_path):
    """The log's directory cannot be made (here a file stands where it would go; for
    an operator, more often a directory the proxy's account may not write): the
    error names the path, with no traceback."""
    (tmp_path / "taken").write_text("")
    result = run_proxy(tmp_path, listen=free_port(), admin=free_port(), log=tmp_path / "taken" / "d.jsonl")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert f"stategate: cannot start: {tmp_path / 'taken'}: ".encode() in result.stderr


@pytest.mark.parametrize("taken", ["listen", "admin"])
def test_run_on_an_address_in_use_names_it(tmp_path, taken):
    """Another process holds the listen or the admin address: the error names that
    address, with no traceback (trio's nurseries wrap the bind error in groups)."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        ports = {"listen": free_port(), "admin": free_port(), taken: holder.getsockname()[1]}
        result = run_proxy(tmp_path, **ports, log=tmp_path / "log" / "d.jsonl")
    assert result.returncode == 2 and b"Traceback" not in result.stderr
    assert f"stategate: cannot start: 127.0.0.1:{ports[taken]}: ".encode() in result.stderr


def test_demo_runs_and_summarizes(tmp_path):
    result = run("demo", "--messages", "400", "--log", str(tmp_path / "demo.jsonl"), timeout=120)
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "Queries arriving (in), by agency group:" in out
    assert "dhs_immigration" in out
    assert str(tmp_path / "demo.jsonl") in out
    log = read_log(tmp_path / "demo.jsonl")
    assert sum(1 for r in log if r["dir"] == "in") == 400
    assert any(r["action"] == "deny" and r["groups"] == ["dhs_immigration"] for r in log)
