"""The decision log writer (SPEC section 6): JSON Lines, sealed, rotated, written
before forwarding.

Each batch of records is encoded in one msgspec call, seals are placed between its
lines where they fall due, and the whole is handed to the operating system in one
``write`` before any of the batch's messages is forwarded.  A write that fails (disk
full, I/O error) is undone to the last whole line, the seal chain is rolled back, and
:class:`LogUnavailable` is raised so the caller can fail closed.

A seal is ``{"seal":N,"lines":K,"prev":"<hex>","h":"<hex>"}``: ``h`` is SHA-256 (or
HMAC-SHA256 keyed with ``key_file``) of ``prev``'s 64 hex characters followed by the K
lines since the previous seal, each with its newline.  Seals fall at most
``seal_every`` lines apart, at least once a second while lines are written
(:meth:`DecisionLog.tick`), before every rotation and reopen, and at close.  The chain
runs on across rotated files and across restarts.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any
from pathlib import Path

import msgspec

from ._fastmatch import line_ends
from ._logfast import SealHash, SealHashUnavailable, reserve
from ._logfiles import SEAL_PREFIX, ZERO_HASH, max_rotation_number, rotated_files
from ._types import LogRecord

_TAIL = 1 << 16


class LogUnavailable(OSError):
    """The log cannot take a line right now; nothing of the batch was kept."""


class Seal(msgspec.Struct):
    seal: int
    lines: int
    prev: str
    h: str


_seal_decoder = msgspec.json.Decoder(Seal)


def seal_line(n: int, lines: int, prev: str, h: str) -> bytes:
    return b'{"seal":%d,"lines":%d,"prev":"%s","h":"%s"}\n' % (n, lines, prev.encode(), h.encode())


def new_hasher(prev: str, key: bytes | None):
    """The running hash of one sealed block, primed with the previous seal's hex."""
    if key is None:
        return hashlib.sha256(prev.encode("ascii"))
    return hmac.new(key, prev.encode("ascii"), hashlib.sha256)


def read_key(key_file: str | os.PathLike | None) -> bytes | None:
    if not key_file:
        return None
    try:
        return Path(key_file).read_bytes()
    except OSError as exc:
        raise OSError(exc.errno, f"key_file {key_file}: {exc.strerror}") from None


def last_seq(path: str | Path) -> int:
    """The highest ``seq`` among the last lines of a log file, else 0."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - _TAIL))
            tail = f.read()
    except FileNotFoundError:
        return 0
    for line in reversed(tail.splitlines()):
        try:
            obj = msgspec.json.decode(line)
        except msgspec.DecodeError:
            continue
        if isinstance(obj, dict) and isinstance(obj.get("seq"), int):
            return obj["seq"]
    return 0


def _last_seal_in(path: Path) -> tuple[Seal | None, int]:
    """The last seal of a file and the byte offset just after it (0 if none).

    Reads the file's tail first, and all of it only if the tail holds no seal."""
    size = path.stat().st_size
    window = 1 << 22
    while True:
        start = max(0, size - window)
        with open(path, "rb") as f:
            f.seek(start)
            data = f.read()
        seal, offset = _last_seal_in_bytes(data)
        if seal is not None:
            return seal, start + offset
        if start == 0:
            return None, 0
        window *= 4


def _last_seal_in_bytes(data: bytes) -> tuple[Seal | None, int]:
    end = len(data)
    while True:
        start = data.rfind(b"\n" + SEAL_PREFIX, 0, end)
        at = start + 1 if start >= 0 else (0 if data.startswith(SEAL_PREFIX) else -1)
        if at < 0:
            return None, 0
        nl = data.find(b"\n", at)
        if nl < 0:  # a seal cut short by a crash: look further back
            end = max(at - 1, 0)
            if end == 0:
                return None, 0
            continue
        try:
            return _seal_decoder.decode(data[at:nl]), nl + 1
        except (msgspec.DecodeError, msgspec.ValidationError):
            end = max(at - 1, 0)
            if end == 0:
                return None, 0


#: Bytes at a log file's end left cached after an fsync, for readers that follow it
#: (``stategate tail -f``).
KEEP_CACHED = 8 << 20


def drop_behind(fd: int, start: int, size: int, keep: int = KEEP_CACHED) -> int:
    """Let the page cache go of a file's bytes from ``start`` up to ``keep`` bytes
    before ``size`` (``POSIX_FADV_DONTNEED`` drops clean pages only, and starts the
    writeback of dirty ones); returns where the advice ended."""
    end = size - keep
    if end <= start:
        return start
    try:
        os.posix_fadvise(fd, start, end - start, os.POSIX_FADV_DONTNEED)
    except OSError:
        return start  # not a regular file: nothing is cached to drop
    return end


class _Syncer:
    """fsync off the caller's thread, then drop-behind; with ``fsync`` off, drop-behind
    alone.

    A seal asks for its file to be synced and returns at once: the proxy's event loop
    never waits on the disk.  The request holds a duplicate of the file descriptor, so
    a rotation or reopen can close the original meanwhile and the right file is still
    synced.  Requests for the same open file coalesce into one fsync, and fsyncs start
    at most every MIN_INTERVAL seconds.

    Once synced, the file's pages but its last KEEP_CACHED bytes are dropped from the
    page cache (``POSIX_FADV_DONTNEED``, which drops only clean pages).  The log is
    written once and read rarely, so keeping it cached buys nothing, and the freed
    pages are what the next appends reuse: on a virtual machine whose fresh memory
    faults in from the host, appends took a third of the time with drop-behind
    (``bench/fsyncstall.py``, bench/README.md).

    With ``fsync`` off (``fsync = false``) nothing is synced, and the pages are let go
    all the same, one request later: ``POSIX_FADV_DONTNEED`` starts the writeback of
    the dirty pages it is given and drops the clean ones, so each range is advised
    twice, once to start its writeback and at the next request, written by then, to
    drop it.  Without that a log never synced takes fresh pages for every append, and
    the proxy ran a third slower with fsync off than with it on (bench/README.md,
    "Seal cost").
    """

    #: Fewest seconds between the starts of two fsyncs.  Seals arrive every few ms
    #: under load; syncing each at once keeps pages under writeback, and appends to
    #: such a page wait for the disk.  Requests arriving meanwhile coalesce.
    MIN_INTERVAL = 0.05
    KEEP_CACHED = KEEP_CACHED  # the module's, as a class attribute a test can lower

    def __init__(self, on_error: Callable[[OSError], None], fsync: bool = True) -> None:
        self._on_error = on_error
        self.fsync = fsync
        #: open-file generation -> [duplicate fd, file size at the latest request]
        self._pending: dict[int, list[int]] = {}
        #: (generation, offset the cache is dropped up to, end of the last advice)
        self._dropped = (0, 0, 0)
        self._last = -self.MIN_INTERVAL
        self._cond = threading.Condition()
        self._busy = False
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="stategate-fsync", daemon=True)
        self._thread.start()

    def request(self, generation: int, fd: int, size: int) -> None:
        """Sync the open file ``generation`` (its descriptor ``fd``, ``size`` bytes
        written so far) soon."""
        with self._cond:
            pending = self._pending.get(generation)
            if pending is None:
                self._pending[generation] = [os.dup(fd), size]
                self._cond.notify()
            else:
                pending[1] = max(pending[1], size)

    def _run(self) -> None:
        while True:
            with self._cond:
                self._busy = False
                self._cond.notify_all()
                while not self._pending and not self._stopped:
                    self._cond.wait()
                # let requests gather for what is left of the interval (a stop ends it)
                deadline = self._last + self.MIN_INTERVAL
                while not self._stopped and (remaining := deadline - time.monotonic()) > 0:
                    self._cond.wait(remaining)
                if not self._pending:
                    return  # stopped, nothing left
                batch, self._pending = self._pending, {}
                self._busy = True
            self._last = time.monotonic()
            for generation, (fd, size) in batch.items():
                try:
                    if self.fsync:
                        os.fsync(fd)
                    self._drop_behind(generation, fd, size)
                except OSError as exc:
                    self._on_error(exc)
                finally:
                    os.close(fd)

    def _drop_behind(self, generation: int, fd: int, size: int) -> None:
        """Drop the file's cached pages up to KEEP_CACHED before ``size``, from where
        the last drop in the same file ended (unsynced: where the last but one did)."""
        done_gen, start, advised = self._dropped
        if done_gen != generation:
            start = advised = 0
        end = drop_behind(fd, start, size, self.KEEP_CACHED)
        if end == start:
            return  # nothing advised
        # Synced, [start, end) was clean and is let go.  Unsynced, this advice let go of
        # what the last one set writing, up to `advised`, and set the rest writing.
        self._dropped = (generation, end if self.fsync else advised, end)

    def drain(self) -> None:
        """Wait until every fsync requested is done."""
        with self._cond:
            while self._pending or self._busy:
                self._cond.wait()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        self._thread.join()


class _InlineSealHash:
    """:class:`~proxy._logfast.SealHash`'s interface over :mod:`hashlib`, all in the
    caller's thread: for a Python whose OpenSSL functions cannot be found."""

    def __init__(self, key: bytes | None) -> None:
        self._key = key
        self._hash: Any = None
        self._saved: Any = None

    def start(self, prev: bytes) -> None:
        self._hash = new_hasher(prev.decode("ascii"), self._key)

    def update(self, data: bytes) -> None:
        self._hash.update(data)

    feed = update

    def hexdigest(self) -> str:
        return self._hash.hexdigest()

    def save(self) -> None:
        self._saved = self._hash.copy()

    mark = save

    def restore(self) -> None:
        self._hash = self._saved

    def close(self) -> None:
        pass


def seal_hash(key: bytes | None) -> SealHash | _InlineSealHash:
    """The running hash of a log's seal blocks: on a thread of its own where it can."""
    try:
        return SealHash(key)
    except SealHashUnavailable:
        return _InlineSealHash(key)


#: The most buffers one ``writev`` takes (POSIX guarantees 16; Linux takes 1024).
IOV_MAX = max(16, min(os.sysconf("SC_IOV_MAX") if "SC_IOV_MAX" in os.sysconf_names else 16, 1024))

#: Disk space kept reserved ahead of the log file's end.
RESERVE_AHEAD = 32 * 1024 * 1024

#: A chunk's lines at least this long are hashed on the background thread; shorter
#: ones (light traffic) in line, where waking the thread would cost more than the hash.
BACKGROUND_HASH_BYTES = 4096


class DecisionLog:
    """Appends sealed records to ``path``; counts lines, seals, rotations and errors."""

    def __init__(
        self,
        path: str | Path,
        *,
        rotate_bytes: int = 256 * 1024 * 1024,
        seal_every: int = 1000,
        key: bytes | None = None,
        fsync: bool = True,
        warn: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        sealed: bool = True,
    ) -> None:
        """``sealed=False`` writes the same lines with no hashing and no seals; it
        exists only as the baseline that bench/sealcost.py measures seals against."""
        self.path = Path(path)
        self.sealed = sealed
        self.rotate_bytes = rotate_bytes
        self.seal_every = seal_every
        self.key = key
        self.fsync = fsync
        self.warn = warn or (lambda m: print(f"stategate: {m}", file=sys.stderr, flush=True))
        self.clock = clock
        self._encoder = msgspec.json.Encoder()
        self.errors = 0
        self.broken = False  # the last write failed
        self.lines = 0
        self.seals = 0
        self.rotations = 0
        self._fd = -1
        self._reserved = False  # space is reserved past the file's end
        self._generation = 0  # counts opens, so a sync request names its file
        # an unsealed log (the benchmark's baseline) never seals, so it starts neither
        # the fsync thread nor the hash thread
        self._syncer = _Syncer(self._sync_failed, fsync) if sealed else None
        self._hash = seal_hash(key) if sealed else _InlineSealHash(key)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._open()
        self._resume()

    # ----------------------------------------------------------- open / resume

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        self._generation += 1
        self._size = os.fstat(self._fd).st_size
        self._reserve_at = self._size  # reserve more space once the file is this long
        self._reserve()

    def _reserve(self) -> None:
        """Keep disk space reserved ahead of the file's end, so that appends never
        wait for an fsync's block allocation (see :mod:`proxy._logfast`)."""
        if self._size >= self._reserve_at:
            # tried again only after half a reservation's growth, whether it worked or not
            self._reserve_at = self._size + RESERVE_AHEAD // 2
            if reserve(self._fd, self._size, RESERVE_AHEAD):
                self._reserved = True

    def _close_file(self) -> None:
        """Close the file, first giving back the reserved space past its end."""
        if self._reserved:
            try:
                os.ftruncate(self._fd, self._size)
            except OSError:
                pass  # only space is lost, until the next start closes the file
            self._reserved = False
        os.close(self._fd)
        self._fd = -1

    def _resume(self) -> None:
        """Find the chain's end: the last seal, and any lines written after it by a
        run that did not close cleanly.  Those are sealed now, so the chain goes on."""
        self.seal_n = 0
        self.prev = ZERO_HASH
        self.last_seq = 0
        # Only regular files hold a chain (a log pointed at a device, e.g. /dev/full in
        # tests, has nothing to resume and must not be read).
        files = [p for p in rotated_files(self.path) + [self.path] if p.is_file()]
        if not files:
            self.last_seq = 0
            self._hash.start(self.prev.encode("ascii"))
            self._pending = 0
            self._last_seal_time = self.clock()
            return
        seal, offset, where = None, 0, None
        for p in reversed(files):
            seal, offset = _last_seal_in(p)
            if seal is not None:
                where = p
                break
        if seal is not None:
            self.seal_n, self.prev = seal.seal, seal.h
        # Unsealed lines: everything after the last seal, in that file and later ones.
        later = files[files.index(where) :] if where is not None else files
        self._hash.start(self.prev.encode("ascii"))
        self._pending = 0
        for i, p in enumerate(later):
            with open(p, "rb") as f:
                if i == 0 and where is not None:
                    f.seek(offset)
                data = f.read()
            if data and not data.endswith(b"\n"):
                cut = data.rfind(b"\n") + 1
                self.warn(f"{p}: dropping a partial last line ({len(data) - cut} bytes) "
                          "left by an earlier run")  # fmt: skip
                if p == self.path:
                    os.ftruncate(self._fd, self._size - (len(data) - cut))
                    self._size -= len(data) - cut
                else:  # rotated away (logrotate) before this start: cut there too
                    try:
                        os.truncate(p, (offset if i == 0 and where is not None else 0) + cut)
                    except OSError as exc:
                        self.warn(f"{p}: cannot cut the partial last line off ({exc.strerror}); "
                                  "verify will report it as a break")  # fmt: skip
                data = data[:cut]
            if data:
                lines = [ln for ln in data.split(b"\n")[:-1] if not ln.startswith(SEAL_PREFIX)]
                for ln in lines:
                    self._hash.update(ln + b"\n")
                self._pending += len(lines)
        self.last_seq = last_seq(self.path) or (last_seq(files[-2]) if len(files) > 1 else 0)
        self._last_seal_time = self.clock()
        if self._pending:
            self.warn(f"{self._pending} unsealed line(s) from an earlier run; sealing them now")
            self.seal()

    # ------------------------------------------------------------------ write

    def _seal_bytes(self) -> bytes:
        h = self._hash.hexdigest()
        line = seal_line(self.seal_n + 1, self._pending, self.prev, h)
        self.seal_n += 1
        self.prev = h
        self._pending = 0
        self._hash.start(h.encode("ascii"))
        return line

    def _state(self) -> tuple[int, str, int]:
        """The seal state, to put back if a write with seals in it fails."""
        self._hash.save()
        return (self.seal_n, self.prev, self._pending)

    def _write_all(self, parts: list[bytes], state: tuple[int, str, int] | None,
                   rewind: bool = False) -> None:  # fmt: skip
        """Write all of ``parts``, one after another, or, on failure, none of them (and
        put back the seal ``state`` of before it, if given, and the hash as saved or
        marked before it, if given or ``rewind``).

        The parts go in one ``writev``, so a seal and the batch after it are written
        without first being joined: at full load every batch has a seal before it, and
        joining copied the whole batch once more.
        """
        if len(parts) > IOV_MAX:  # a long batch split by many seals
            parts = [b"".join(parts)]
        total = sum(map(len, parts))
        written = 0
        try:
            written = os.writev(self._fd, parts)
            if written < total:  # a short write (a signal, the disk filling): the rest
                view = memoryview(b"".join(parts))
                while written < total:
                    written += os.write(self._fd, view[written:])
        except OSError as exc:
            self.errors += 1
            if written:
                try:
                    os.ftruncate(self._fd, self._size)
                    self._reserve_at = self._size  # that gave the reserved space back too
                except OSError:
                    pass
            if state is not None:
                self.seal_n, self.prev, self._pending = state
            if state is not None or rewind:
                self._hash.restore()
            self.broken = True
            raise LogUnavailable(exc.errno, f"cannot write {self.path}: {exc.strerror}") from exc
        self._size += written
        self.broken = False
        self._reserve()

    def write(self, records: list[LogRecord]) -> None:
        """Log a batch of records, sealing where due; all or nothing."""
        if records:
            self.write_lines(self._encoder.encode_lines(records), len(records), records[-1].seq)

    def write_lines(self, data: bytes, count: int, last_seq: int) -> None:
        """Log ``count`` encoded lines (the last numbered ``last_seq``), sealing where
        due; all or nothing.

        A seal goes before a batch that would take the lines since the last seal past
        ``seal_every``, so a batch is written whole and its hash computed in the
        background (see :mod:`proxy._logfast`) while the caller goes on; only a batch
        longer than ``seal_every`` is split, with its seals computed here.
        """
        if not count:
            return
        if not self.sealed:
            self._write_all([data], None)
            self.lines += count
            self.last_seq = last_seq
            return
        if count > self.seal_every:
            self._write_split(data, count)
        else:
            lines, state = data, None
            parts = [data]
            if self._pending + count > self.seal_every:
                state = self._state()
                parts.insert(0, self._seal_bytes())
            # A long batch goes to the hash thread before its write, so that the thread
            # hashes it meanwhile and the next seal seldom waits for it (bench/README,
            # "Seal cost"); a failed write puts the hash back as saved (state) or as
            # marked here.  A short one is hashed here once written.
            early = len(lines) >= BACKGROUND_HASH_BYTES
            if early:
                if state is None:
                    self._hash.mark()
                self._hash.feed(lines)
            self._write_all(parts, state, rewind=early)
            if not early:
                self._hash.update(lines)
            self._pending += count
            if state is not None:
                self.seals += 1
                self._last_seal_time = self.clock()
                self._sync()
        self.lines += count
        self.last_seq = last_seq
        if self._size > self.rotate_bytes:
            try:
                self.rotate()
            except OSError as exc:  # the batch is logged; rotation is retried next time
                self.errors += 1
                self.warn(f"cannot rotate {self.path}: {exc.strerror or exc}")

    def _write_split(self, data: bytes, count: int) -> None:
        """A batch of more than seal_every lines, with seals placed in it."""
        state = self._state()
        parts: list[bytes] = []
        sealed = 0
        done = pos = 0
        while done < count:
            room = min(self.seal_every - self._pending, count - done)
            end = line_ends(data, pos, room) if room < count - done else len(data)
            part = data[pos:end]
            pos = end
            done += room
            parts.append(part)
            self._hash.update(part)
            self._pending += room
            if self._pending >= self.seal_every:
                parts.append(self._seal_bytes())
                sealed += 1
        self._write_all(parts, state)
        if sealed:
            self.seals += sealed
            self._last_seal_time = self.clock()
            self._sync()

    def _sync(self) -> None:
        """fsync (if on) and drop-behind after a seal, in the background (see _Syncer)."""
        if self._syncer is not None:
            try:
                self._syncer.request(self._generation, self._fd, self._size)
            except OSError as exc:  # no descriptor left to duplicate
                self._sync_failed(exc)

    def _sync_failed(self, exc: OSError) -> None:
        """A seal's fsync failed, or with fsync off the request for its drop-behind
        (the descriptor could not be copied): counted, and reported as what it was."""
        self.errors += 1
        self.warn(f"{'fsync' if self.fsync else 'drop-behind'} {self.path}: {exc.strerror}")

    def seal(self) -> bool:
        """Write a seal now if any line is unsealed.  False if the write failed."""
        if not self._pending or not self.sealed:
            return True
        state = self._state()
        try:
            self._write_all([self._seal_bytes()], state)
        except LogUnavailable as exc:
            self.warn(f"{exc}; seal postponed")
            return False
        self.seals += 1
        self._last_seal_time = self.clock()
        self._sync()
        return True

    def tick(self) -> None:
        """Call often: seals when lines have waited a second."""
        if self._pending and self.clock() - self._last_seal_time >= 1.0:
            self.seal()

    # ------------------------------------------------------- rotate / reopen

    def rotate(self) -> None:
        """Seal, then move the file to ``<path>.<n>`` and start a new one."""
        if not self.seal():
            return
        target = self.path.with_name(f"{self.path.name}.{max_rotation_number(self.path) + 1}")
        self._close_file()
        try:
            os.rename(self.path, target)
        finally:
            self._open()
        self.rotations += 1

    def reopen(self) -> None:
        """After an external rotation (logrotate ``create`` then SIGUSR1), or after a
        failed write: seal what went to the old file, then write to ``path`` afresh."""
        self.seal()
        if self._fd >= 0:
            self._close_file()
        self._open()

    def close(self) -> None:
        """Seal, and wait until every seal's fsync is done."""
        if self._fd >= 0:
            self.seal()
            if self._syncer is not None:
                self._syncer.drain()
            self._close_file()
        if self._syncer is not None:
            self._syncer.stop()
            self._syncer = None
        self._hash.close()

    def __enter__(self) -> DecisionLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
