"""The sealed log: SPEC section 6's seal format recomputed independently, seal
timing, rotation, restarts, write failures, and verify against every kind of tamper."""

from __future__ import annotations

import errno
import hashlib
import hmac
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._fastmatch import format_utc_ns as fast_format_utc_ns
from proxy._log import DecisionLog, LogUnavailable
from proxy._logfiles import log_files
from proxy._pipeline import format_utc_ns, utc_timestamp
from proxy._types import LogRecord
from proxy._verify import verify


def rec(seq: int, action: str = "allow") -> LogRecord:
    return LogRecord("2026-11-22T10:00:00.000000Z", f"run-{seq:x}", seq, 1, "127.0.0.1:9",
                     "in", "text", "DQ", "AZ0070000", ("CA",), None, None, None, None, False,
                     "AZ0070000", (), action, "default", None, "enforce", action == "allow",
                     "0" * 64, 42)  # fmt: skip


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def write_many(log: DecisionLog, start: int, sizes: list[int]) -> int:
    seq = start
    for n in sizes:
        log.write([rec(seq + i + 1) for i in range(n)])
        seq += n
    return seq


def independent_check(files: list[Path], key: bytes | None = None) -> tuple[int, int]:
    """Recompute every seal from the raw bytes, exactly as SPEC section 6 words it."""
    prev = "0" * 64
    block: list[bytes] = []
    seals = lines = 0
    for f in files:
        for raw in f.read_bytes().splitlines(keepends=True):
            obj = json.loads(raw)
            if "seal" not in obj:
                block.append(raw)
                lines += 1
                continue
            assert list(obj) == ["seal", "lines", "prev", "h"]
            data = prev.encode() + b"".join(block)
            h = (hmac.new(key, data, hashlib.sha256) if key else hashlib.sha256(data)).hexdigest()
            assert obj == {"seal": seals + 1, "lines": len(block), "prev": prev, "h": h}
            prev, block, seals = h, [], seals + 1
    assert block == []  # everything sealed
    return seals, lines


@pytest.mark.parametrize("key", [None, b"synthetic-test-key\n"])
def test_seals_follow_the_spec_and_come_at_most_seal_every_lines_apart(tmp_path, key):
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=5, key=key, fsync=False) as log:
        write_many(log, 0, [1, 3, 7, 12, 2, 5])
    seals, lines = independent_check([path], key)
    assert lines == 30
    blocks = [json.loads(l)["lines"] for l in path.read_bytes().splitlines() if b'"seal"' in l]
    assert all(1 <= k <= 5 for k in blocks) and sum(blocks) == 30
    assert verify([path], key).ok
    if key:
        result = verify([path], None)
        assert not result.ok and "key-file" in result.broken.reason


def test_a_seal_every_second_while_lines_are_written_and_at_close(tmp_path):
    clock = FakeClock()
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=1000, fsync=False, clock=clock)
    log.write([rec(1), rec(2)])
    log.tick()
    assert log.seals == 0  # not yet a second
    clock.now = 1.0
    log.tick()
    assert log.seals == 1
    clock.now = 5.0
    log.tick()
    assert log.seals == 1  # nothing new to seal
    log.write([rec(3)])
    log.close()
    assert log.seals == 2
    assert independent_check([path]) == (2, 3)


def test_rotation_keeps_every_line_whole_and_the_chain_going(tmp_path):
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=4, rotate_bytes=2000, fsync=False) as log:
        last = write_many(log, 0, [3] * 40)
    files = log_files(path)
    assert len(files) > 5 and files[-1] == path
    assert log.rotations == len(files) - 1
    seals, lines = independent_check(files)
    assert lines == last == 120
    seqs = [json.loads(l)["seq"] for f in files for l in f.read_bytes().splitlines() if b'"seq"' in l]
    assert seqs == list(range(1, 121))
    assert verify(files).ok


def test_restart_continues_the_chain_and_the_numbering(tmp_path):
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=4, rotate_bytes=1500, fsync=False) as log:
        write_many(log, 0, [3] * 10)
    with DecisionLog(path, seal_every=4, rotate_bytes=1500, fsync=False) as log:
        assert log.last_seq == 30
        write_many(log, 30, [2] * 10)
    files = log_files(path)
    seals, lines = independent_check(files)
    assert lines == 50
    assert verify(files).ok


def test_restart_after_a_crash_seals_the_lines_left_unsealed(tmp_path):
    path = tmp_path / "d.jsonl"
    crashed = DecisionLog(path, seal_every=100, fsync=False)
    write_many(crashed, 0, [3, 4])  # no close: as if killed
    result = verify([path])
    assert result.ok and result.unsealed == 7 and result.unsealed_from == f"{path}:1"
    # a torn last line (power loss mid-write) is dropped on restart
    with open(path, "ab") as f:
        f.write(b'{"ts":"2026-11-22T10:00')
    warnings: list[str] = []
    with DecisionLog(path, seal_every=100, fsync=False, warn=warnings.append) as log:
        assert log.last_seq == 7
        write_many(log, 7, [2])
    assert any("partial last line" in w for w in warnings)
    assert any("7 unsealed" in w for w in warnings)
    assert independent_check([path]) == (2, 9)


def test_a_torn_line_rotated_away_before_the_restart_is_cut_there(tmp_path):
    """Killed mid-write, then rotated by logrotate before the next start: the torn
    line sits at the end of a rotated file. The restart cuts it off there too, so the
    log verifies, as it does when the torn line is in the base file."""
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=4, fsync=False) as log:
        write_many(log, 0, [5])  # a seal after 4, the final seal over 1
    crashed = DecisionLog(path, seal_every=100, fsync=False)
    write_many(crashed, 5, [3])  # no close: as if killed
    os.close(crashed._fd)
    with open(path, "ab") as f:
        f.write(b'{"ts":"2026-11-22T10:00')
    path.rename(tmp_path / "d.jsonl.1")  # logrotate, no proxy to reopen
    assert verify(log_files(path)).torn == f"{tmp_path / 'd.jsonl.1'}:11"  # the newest file, so far
    warnings: list[str] = []
    with DecisionLog(path, seal_every=100, fsync=False, warn=warnings.append) as log:
        assert log.last_seq == 8
        write_many(log, 8, [2])
    assert any("partial last line" in w for w in warnings)
    assert (tmp_path / "d.jsonl.1").read_bytes().endswith(b"\n")
    files = log_files(path)
    assert independent_check(files) == (4, 10)
    result = verify(files)
    assert result.ok and result.torn is None and result.unsealed == 0


def test_a_failed_write_keeps_nothing_and_the_chain_intact(tmp_path):
    full = tmp_path / "full.jsonl"
    full.symlink_to("/dev/full")
    log = DecisionLog(full, seal_every=2, fsync=False, warn=lambda m: None)
    with pytest.raises(LogUnavailable):
        log.write([rec(1), rec(2), rec(3)])
    assert (log.seal_n, log._pending, log.errors) == (0, 0, 1)
    log.close()

    # A real file that fails once: the batch is undone, later writes seal correctly.
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=2, fsync=False, warn=lambda m: None)
    log.write([rec(1)])
    real_fd = log._fd
    log._fd = os.open("/dev/full", os.O_WRONLY)
    with pytest.raises(LogUnavailable):
        log.write([rec(2), rec(3)])
    os.close(log._fd)
    log._fd = real_fd
    log.write([rec(2), rec(3)])
    log.close()
    assert independent_check([path]) == (2, 3)


def test_short_writes_are_finished_and_seals_go_with_the_lines(tmp_path, monkeypatch):
    """A seal and the batch after it go in one writev, which may take only part of
    them (a signal, a filling disk): the rest follows, so every line is in the log
    once, in order, and sealed; a batch split by more seals than one writev takes is
    written too."""
    import proxy._log as logmod

    calls: list[int] = []
    real_write = os.write

    def short_writev(fd: int, parts: list[bytes]) -> int:
        calls.append(len(parts))
        data = b"".join(parts)
        return real_write(fd, data[: max(1, len(data) // 3)])

    monkeypatch.setattr(logmod.os, "writev", short_writev)
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=4, fsync=False, warn=lambda m: None) as log:
        seq = write_many(log, 0, [3, 3, 3, 1, 9])
    assert max(calls) >= 2  # a seal went with a batch
    monkeypatch.undo()
    with DecisionLog(path, seal_every=1, fsync=False, warn=lambda m: None) as log:
        seq = write_many(log, seq, [logmod.IOV_MAX + 10])
    seals, lines = independent_check([path])
    assert lines == seq == 19 + logmod.IOV_MAX + 10
    assert [json.loads(raw)["seq"] for raw in path.read_bytes().splitlines()
            if b'"seal"' not in raw] == list(range(1, seq + 1))  # fmt: skip
    assert verify([path]).ok


# ------------------------------------------------------------------ tampering


@pytest.fixture
def sealed_log(tmp_path) -> list[Path]:
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=5, rotate_bytes=4000, fsync=False) as log:
        write_many(log, 0, [2] * 20)
    files = log_files(path)
    assert len(files) >= 3 and verify(files).ok
    return files


def lines_of(p: Path) -> list[bytes]:
    return p.read_bytes().splitlines(keepends=True)


def decision_indexes(lines: list[bytes]) -> list[int]:
    return [i for i, l in enumerate(lines) if b'"seq"' in l]


def test_an_edited_line_breaks_its_seal(sealed_log):
    f = sealed_log[1]
    lines = lines_of(f)
    i = decision_indexes(lines)[1]
    lines[i] = lines[i].replace(b'"allow"', b'"deny"')
    f.write_bytes(b"".join(lines))
    result = verify(sealed_log)
    seal_line = next(j for j in range(i, len(lines)) if lines[j].startswith(b'{"seal"'))
    assert (result.broken.file, result.broken.line) == (str(f), seal_line + 1)
    assert "altered" in result.broken.reason and f"lines 1-{seal_line}" in result.broken.reason


@pytest.mark.parametrize("kind", ["delete", "insert", "reorder"])
def test_deleted_inserted_reordered_lines_are_named(sealed_log, kind):
    f = sealed_log[1]
    lines = lines_of(f)
    idx = decision_indexes(lines)
    i = idx[2]
    if kind == "delete":
        del lines[i]
        expected_line = i + 1  # the line after the deleted one now sits at i
    elif kind == "insert":
        lines.insert(i, lines[idx[0]])
        expected_line = i + 1
    else:
        lines[i], lines[idx[3]] = lines[idx[3]], lines[i]
        expected_line = i + 1
    f.write_bytes(b"".join(lines))
    result = verify(sealed_log)
    assert result.broken is not None
    assert (result.broken.file, result.broken.line) == (str(f), expected_line), result.broken
    assert "seq" in result.broken.reason


def test_a_deleted_seal_and_a_missing_file_are_breaks(sealed_log):
    f = sealed_log[1]
    lines = lines_of(f)
    j = next(k for k, l in enumerate(lines) if l.startswith(b'{"seal"'))
    del lines[j]
    f.write_bytes(b"".join(lines))
    result = verify(sealed_log)
    assert result.broken.file == str(f) and "seal" in result.broken.reason

    # a whole rotated file gone (the damaged one above is left out too)
    files = sealed_log[:1] + sealed_log[2:]
    result = verify(files)
    assert result.broken.file == str(sealed_log[2])


def test_a_torn_last_line_is_reported_as_torn_but_a_torn_older_file_is_a_break(sealed_log):
    newest = sealed_log[-1]
    with open(newest, "ab") as f:  # two whole lines after the last seal, then a torn one
        f.write(msgspec.json.encode(rec(41)) + b"\n" + msgspec.json.encode(rec(42)) + b"\n")
        f.write(msgspec.json.encode(rec(43))[:-10])
    lines = newest.read_bytes().count(b"\n")
    result = verify(sealed_log)
    assert result.ok, result.broken
    assert result.unsealed == 2 and result.torn == f"{newest}:{lines + 1}"
    # the torn part is not a line: it is not counted, and its seq is not checked
    whole = verify(sealed_log[:-1]).lines + lines - newest.read_bytes().count(b'{"seal"')
    assert result.lines == whole
    # a rotated file ends with a seal, so a torn line in one is a break
    older = sealed_log[1]
    older_data = older.read_bytes()
    older.write_bytes(older_data[:-10])
    result = verify(sealed_log)
    assert result.broken is not None and "truncated" in result.broken.reason
    assert result.broken.file == str(older) and result.torn is None
    # and so is a rotated file cut at a line boundary: the chain breaks into the next file
    older.write_bytes(b"".join(lines_of(older)[:-3]))
    assert verify(sealed_log).broken is not None


def test_a_torn_final_seal_leaves_its_lines_unsealed_not_broken(tmp_path):
    path = tmp_path / "d.jsonl"
    with DecisionLog(path, seal_every=5, fsync=False) as log:
        write_many(log, 0, [7])  # a seal after 5 lines, the final seal over 2
    data = path.read_bytes()
    final = data.rindex(b'{"seal"')
    assert data[final:].startswith(b'{"seal":2,"lines":2,')
    path.write_bytes(data[: final + 20])
    result = verify([path])
    assert result.ok and result.seals == 1 and result.lines == 7
    assert result.unsealed == 2 and result.unsealed_from == f"{path}:7"
    assert result.torn == f"{path}:9"


def test_unsealed_tail_is_reported_not_broken(sealed_log):
    last = sealed_log[-1]
    with open(last, "ab") as f:
        f.write(msgspec.json.encode(rec(41)) + b"\n")
        f.write(msgspec.json.encode(rec(42)) + b"\n")
    result = verify(sealed_log)
    assert result.ok and result.unsealed == 2
    # but unsealed lines out of order are a break
    with open(last, "ab") as f:
        f.write(msgspec.json.encode(rec(50)) + b"\n")
    result = verify(sealed_log)
    assert not result.ok and "seq 50 where 43" in result.broken.reason


def test_fsync_runs_off_the_writers_thread_for_each_seal_and_close_waits(tmp_path, monkeypatch):
    import threading

    import proxy._log as logmod

    synced: list[tuple[str, str]] = []  # (thread name, file path)
    real_fsync = os.fsync

    def slow_fsync(fd: int) -> None:
        synced.append((threading.current_thread().name, os.readlink(f"/proc/self/fd/{fd}")))
        threading.Event().wait(0.05)
        real_fsync(fd)

    monkeypatch.setattr(logmod.os, "fsync", slow_fsync)
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=2, rotate_bytes=1500, fsync=True)
    for i in range(1, 13):
        log.write([rec(i)])
    assert log.rotations >= 1
    log.close()  # waits for the syncs under way
    assert synced and {name for name, _ in synced} == {"stategate-fsync"}
    # files that were rotated away were synced too, through descriptors that outlived
    # the rotation (readlink names a file as it is called when it is synced)
    files = {p for _, p in synced}
    assert len(files) >= 2 and files <= {str(p) for p in log_files(path)}
    assert log.errors == 0
    assert verify(log_files(path)).ok


def _rotate_with_syncs_seen(tmp_path, monkeypatch, fsync: bool, on_fsync, on_fadvise) -> Path:
    """A log written through two rotations and more with a seal every 10 lines, the
    fsync thread's os.fsync and os.posix_fadvise replaced by the given functions, its
    kept end lowered to 20,000 bytes and its requests never held back; its path.
    The thread finishes each seal's request before the next batch, so none coalesce
    and every seal gets its own fsync and advice, whatever the machine's timing."""
    import proxy._log as logmod

    monkeypatch.setattr(logmod.os, "fsync", on_fsync)
    monkeypatch.setattr(logmod.os, "posix_fadvise", on_fadvise)
    monkeypatch.setattr(logmod._Syncer, "KEEP_CACHED", 20_000)
    monkeypatch.setattr(logmod._Syncer, "MIN_INTERVAL", 0.0)
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=10, rotate_bytes=150_000, fsync=fsync)
    for batch in range(100):
        write_many(log, 10 * batch, [10])
        log._syncer.drain()
    log.close()
    assert log.rotations >= 2 and log.errors == 0
    return path


def test_synced_pages_are_dropped_from_the_cache_behind_the_writer(tmp_path, monkeypatch):
    """After each fsync the file's cached pages are let go, but its last KEEP_CACHED
    bytes: only bytes already synced, each range once, in order, in every file
    (rotated ones through the descriptor that outlived the rotation)."""
    events: list[tuple] = []
    real_fsync, real_fadvise = os.fsync, os.posix_fadvise

    def name(fd: int) -> int:  # the file, whatever it is called by then: its inode
        return os.fstat(fd).st_ino

    def fsync(fd: int) -> None:
        real_fsync(fd)
        events.append(("sync", name(fd), os.fstat(fd).st_size))

    def fadvise(fd: int, offset: int, length: int, advice: int) -> None:
        events.append(("drop", name(fd), offset, length, advice))
        real_fadvise(fd, offset, length, advice)

    path = _rotate_with_syncs_seen(tmp_path, monkeypatch, True, fsync, fadvise)
    synced: dict[int, int] = {}
    dropped: dict[int, int] = {}
    for ev in events:
        if ev[0] == "sync":
            synced[ev[1]] = ev[2]
            continue
        _, file, offset, length, advice = ev
        assert advice == os.POSIX_FADV_DONTNEED
        assert offset == dropped.get(file, 0) and length > 0  # in order, each range once
        assert offset + length <= synced[file] - 20_000  # synced, and the end kept cached
        dropped[file] = offset + length
    for f in log_files(path)[:-1]:  # each rotated file is let go of up to its kept end
        assert dropped[f.stat().st_ino] == f.stat().st_size - 20_000, f
    assert verify(log_files(path)).ok


def test_with_fsync_off_pages_are_dropped_a_request_after_their_writeback_starts(tmp_path, monkeypatch):
    """fsync = false: nothing is synced, and the written pages are let go all the same.
    POSIX_FADV_DONTNEED starts the writeback of dirty pages and drops clean ones, so
    each range is advised twice, in order: once to start its writeback and at the next
    request again, to drop it; never the last KEEP_CACHED bytes."""
    advice: list[tuple[int, int, int, int]] = []  # (file, offset, end, file size then)
    synced: list[int] = []
    real_fadvise = os.posix_fadvise

    def fadvise(fd: int, offset: int, length: int, how: int) -> None:
        assert how == os.POSIX_FADV_DONTNEED
        st = os.fstat(fd)
        advice.append((st.st_ino, offset, offset + length, st.st_size))
        real_fadvise(fd, offset, length, how)

    path = _rotate_with_syncs_seen(tmp_path, monkeypatch, False, synced.append, fadvise)
    assert not synced
    by_file: dict[int, list[tuple[int, int]]] = {}
    for file, offset, end, size in advice:
        assert offset < end <= size - 20_000  # the end kept cached
        by_file.setdefault(file, []).append((offset, end))
    for f in log_files(path)[:-1]:  # each rotated file
        calls = by_file[f.stat().st_ino]
        assert len(calls) >= 3
        for k, (offset, end) in enumerate(calls):
            # from where the last but one advice ended: each range advised twice
            assert offset == (calls[k - 2][1] if k >= 2 else 0)
            assert end > (calls[k - 1][1] if k else 0)  # and then on, in order
    assert verify(log_files(path)).ok


def test_a_failed_fsync_is_counted_and_reported(tmp_path):
    link = tmp_path / "null.jsonl"
    link.symlink_to("/dev/null")  # writes succeed, fsync fails (EINVAL)
    warnings: list[str] = []
    log = DecisionLog(link, seal_every=2, fsync=True, warn=warnings.append)
    log.write([rec(1), rec(2)])
    log.close()
    assert log.errors >= 1 and any(w.startswith(f"fsync {link}") for w in warnings)


def test_with_fsync_off_a_failed_request_is_reported_as_drop_behind(tmp_path, monkeypatch):
    """With fsync off a seal asks only for drop-behind; when that request fails (no
    descriptor left to copy), the warning does not speak of an fsync."""
    warnings: list[str] = []
    log = DecisionLog(tmp_path / "d.jsonl", seal_every=2, fsync=False, warn=warnings.append)

    def no_descriptor(fd: int) -> int:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE))

    monkeypatch.setattr(os, "dup", no_descriptor)
    log.write([rec(1), rec(2)])
    log.close()  # the seal: its drop-behind request fails
    monkeypatch.undo()
    assert log.errors == 1
    assert warnings == [f"drop-behind {tmp_path / 'd.jsonl'}: {os.strerror(errno.EMFILE)}"]
    assert verify(log_files(tmp_path / "d.jsonl")).ok  # the seal itself was written


# ------------------------------------------------------------ the seal hash


@pytest.mark.parametrize("key", [None, b"k", b"synthetic-key-".ljust(64, b"x"), b"long-synthetic-key" * 8])
def test_the_threaded_seal_hash_gives_hashlibs_answers(key):
    """SealHash (OpenSSL on a C thread, HMAC built from SHA-256 by hand) against
    hashlib and hmac on random chunks, fed and updated in turn, saved and restored."""
    import random

    from proxy._logfast import SealHash

    rng = random.Random(4)
    h = SealHash(key)
    prev = b"0" * 64
    h.start(prev)
    ref = hmac.new(key, prev, hashlib.sha256) if key else hashlib.sha256(prev)
    saved = None
    for i in range(600):
        data = rng.randbytes(rng.choice([0, 1, 63, 64, 65, 4096, 70_000]))
        (h.feed if rng.random() < 0.7 else h.update)(data)
        ref.update(data)
        if i % 50 == 7:
            h.save()
            saved = ref.copy()
        if i % 50 == 30:
            h.restore()
            ref = saved
        if i % 100 == 99:
            assert h.hexdigest() == ref.hexdigest()
            new_prev = ref.hexdigest().encode()
            h.start(new_prev)
            ref = hmac.new(key, new_prev, hashlib.sha256) if key else hashlib.sha256(new_prev)
    assert h.hexdigest() == ref.hexdigest()
    h.close()
    h.feed(b"after close, hashed in line")  # no thread left; the hash goes on
    ref.update(b"after close, hashed in line")
    assert h.hexdigest() == ref.hexdigest()


@pytest.fixture(params=["thread", "inline"])
def hash_kind(request, monkeypatch):
    """Run a test with the seal hash on its C thread and with the hashlib fallback."""
    import proxy._log as logmod

    if request.param == "inline":
        monkeypatch.setattr(logmod, "seal_hash", logmod._InlineSealHash)
    return request.param


@pytest.mark.parametrize("key", [None, b"synthetic-test-key\n"])
def test_chunks_big_and_small_and_failed_writes_seal_as_the_spec_says(tmp_path, hash_kind, key):
    """Chunks above BACKGROUND_HASH_BYTES go to the hash thread, smaller ones are
    hashed in line; a failed write, with or without a seal in it, leaves the chain as
    it was."""
    import proxy._log as logmod

    path = tmp_path / "d.jsonl"
    per_line = len(msgspec.json.encode(rec(1))) + 1
    big = logmod.BACKGROUND_HASH_BYTES // per_line + 1
    log = DecisionLog(path, seal_every=3 * big, key=key, fsync=False, warn=lambda m: None)
    assert isinstance(log._hash, logmod.SealHash if hash_kind == "thread" else logmod._InlineSealHash)
    seq = 0
    for n in [1, big, 2, big + 5, big, 3, big - 1, 7 * big, big, 1]:
        real_fd = log._fd
        log._fd = os.open("/dev/full", os.O_WRONLY)
        with pytest.raises(LogUnavailable):
            log.write([rec(seq + i + 1) for i in range(n)])
        os.close(log._fd)
        log._fd = real_fd
        seq = write_many(log, seq, [n])
    log.close()
    seals, lines = independent_check([path], key)
    assert lines == seq and seals >= seq // (3 * big)
    assert verify([path], key).ok


def test_disk_space_is_reserved_ahead_and_given_back(tmp_path):
    """Blocks are reserved past the end while the log is open (so an fsync's block
    allocation never holds up an append) and given back at rotation and close."""
    import proxy._log as logmod
    from proxy._logfast import reserve

    probe = tmp_path / "probe"
    with open(probe, "wb") as f:
        if not reserve(f.fileno(), 0, 1 << 20):
            pytest.skip("this filesystem cannot reserve space (no fallocate)")
    path = tmp_path / "d.jsonl"
    log = DecisionLog(path, seal_every=4, rotate_bytes=100_000, fsync=False)
    write_many(log, 0, [3] * 100)
    st = os.fstat(log._fd)
    assert st.st_blocks * 512 >= st.st_size + logmod.RESERVE_AHEAD // 2  # reserved ahead
    assert log.rotations >= 1
    log.close()
    for f in log_files(path):
        st = f.stat()
        assert st.st_blocks * 512 < st.st_size + 64 * 1024, f  # given back
    seals, lines = independent_check(log_files(path))
    assert lines == 300


# ------------------------------------------------------------------ timestamps


#: The Python formatter and the engine's compiled one (what the proxy stamps chunks with).
FORMATTERS = pytest.mark.parametrize("format_utc_ns", [format_utc_ns, fast_format_utc_ns],
                                     ids=["python", "compiled"])  # fmt: skip


@FORMATTERS
@given(ns=st.integers(min_value=0, max_value=253402300799_999_999_999))  # to 9999-12-31
@settings(max_examples=2000, deadline=None)
def test_timestamps_are_datetimes_rfc3339_form(format_utc_ns, ns):
    """The cached-second formatter gives what datetime's strftime gives, truncated to
    the microsecond, for any time to the year 9999, in any order of calls."""
    expected = (datetime(1970, 1, 1, tzinfo=timezone.utc) + timedelta(microseconds=ns // 1000))
    assert format_utc_ns(ns) == expected.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@FORMATTERS
def test_timestamps_across_a_second_boundary(format_utc_ns):
    """The cache holds one second: the next second's text is not the last one's."""
    second = 1_764_633_599  # 2025-12-01T23:59:59Z
    ns = second * 10**9
    stamps = [format_utc_ns(ns + 999_999_999), format_utc_ns(ns + 10**9), format_utc_ns(ns + 999_999_000)]
    assert stamps == ["2025-12-01T23:59:59.999999Z", "2025-12-02T00:00:00.000000Z",
                      "2025-12-01T23:59:59.999999Z"]  # fmt: skip
    now = utc_timestamp()
    parsed = datetime.strptime(now, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - parsed).total_seconds()) < 5
