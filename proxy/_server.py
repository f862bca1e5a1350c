"""The trio layer: accept, connect upstream, pump both directions, shut down.

All protocol work happens in the compiled :class:`~proxy._fastmatch.Engine`; this
module only moves bytes.  For each received chunk it makes one call into the engine,
writes the batch's log lines, and only then forwards the allowed bytes and sends any
ER replies.  A chunk is decided wholly under one policy revision: the one current
when the chunk arrived.  Reading the next chunk waits until the last one has been
sent on, so a slow reader on either side slows its sender (backpressure) instead of
growing buffers.
"""

from __future__ import annotations

import math
import os
import signal
import ssl
import sys
from collections.abc import Callable
from itertools import count

import trio

from ._config import Config, ConfigError, TlsConfig, load_config
from ._fastmatch import Engine, Matcher
from ._log import DecisionLog, LogUnavailable, read_key
from ._metrics import Metrics, serve_admin
from ._pipeline import RECEIVE_SIZE, Sequencer, incomplete_record, utc_timestamp
from ._policy import compile_policy

#: When a connection is closed (shutdown, idle, frame timeout), how long a forward
#: already under way may still take to finish its frames.
SEND_GRACE = 5.0
#: How often the watchdog looks at idle connections and held-open partial frames.
WATCH_EVERY = 0.25


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


class CannotListen(OSError):
    """A listen address that cannot be bound: in use, not one of this host's, a port
    the account may not take.  Its ``filename`` is the address, so the CLI reports
    ``cannot start: ADDRESS: reason``."""


async def open_listeners(address: str) -> list[trio.SocketListener]:
    """Listen on ``address`` (``host:port``); CannotListen naming it if that fails."""
    host, port = split_hostport(address)
    try:
        return await trio.open_tcp_listeners(port, host=host or None)
    except OSError as exc:
        raise CannotListen(exc.errno, exc.strerror or str(exc), address) from None


def _warn(message: str) -> None:
    print(f"stategate: {message}", file=sys.stderr, flush=True)


def server_context(cfg: TlsConfig, where: str) -> ssl.SSLContext:
    """The listen side's TLS: TLS 1.2 at least; client certificates checked against
    ``ca`` when given, and required with ``require_client_cert``."""
    if not cfg.cert or not cfg.key:
        raise ConfigError(f"{where}: `cert` and `key` are required for TLS")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cfg.cert, cfg.key)
        if cfg.ca:
            ctx.load_verify_locations(cfg.ca)
            ctx.verify_mode = ssl.CERT_REQUIRED if cfg.require_client_cert else ssl.CERT_OPTIONAL
        elif cfg.require_client_cert:
            raise ConfigError(f"{where}: `require_client_cert` needs `ca`")
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load certificates: {exc}") from None
    return ctx


def client_context(cfg: TlsConfig, where: str) -> ssl.SSLContext:
    """TLS toward the switch: its certificate checked against ``ca`` (else the system
    store) and its name; our own certificate presented when ``cert`` is given."""
    if cfg.require_client_cert:
        raise ConfigError(f"{where}: `require_client_cert` applies to the listen side only")
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=cfg.ca or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        if cfg.cert:
            ctx.load_cert_chain(cfg.cert, cfg.key or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"{where}: cannot load certificates: {exc}") from None
    return ctx


def tls_contexts(config: Config, where: str) -> tuple[ssl.SSLContext | None, ssl.SSLContext | None]:
    """The listen side's and the upstream side's TLS contexts (None where plain TCP);
    a missing or unreadable certificate is a ConfigError naming the section."""
    tls, up = config.proxy.tls, config.proxy.upstream_tls
    return (server_context(tls, f"{where}: `proxy.tls`") if tls else None,
            client_context(up, f"{where}: `proxy.upstream_tls`") if up else None)  # fmt: skip


class _Conn:
    """One connection's state for the watchdog and for closing it."""

    __slots__ = ("conn", "last_activity", "frame_since", "engines", "scope", "sends", "send_deadline")

    def __init__(self, conn: int, now: float, engines: tuple[Engine, Engine]) -> None:
        self.conn = conn
        self.last_activity = now
        self.frame_since: float | None = None
        self.engines = engines
        self.scope: trio.CancelScope | None = None
        #: Sends under way.  A decided, logged frame is sent whole: its send is
        #: shielded from cancellation, and only a close gives it a deadline.
        self.sends: set[trio.CancelScope] = set()
        self.send_deadline = math.inf  # set by close, for sends under way or to come

    def close(self, grace: float) -> None:
        """Close the pair; sends under way (and any still to start) get ``grace``."""
        self.send_deadline = min(self.send_deadline, trio.current_time() + grace)
        for send in self.sends:
            send.deadline = self.send_deadline
        if self.scope is not None:
            self.scope.cancel()


class Proxy:
    """One running proxy: its config, current matcher, log and connections."""

    def __init__(
        self,
        config: Config,
        matcher: Matcher,
        log: DecisionLog,
        *,
        config_path: str | None = None,
        warn: Callable[[str], None] = _warn,
        admin: bool = False,
    ) -> None:
        where = config_path or "<config>"
        if not config.proxy.upstream:
            raise ConfigError(f"{where}: `proxy.upstream` is required to run")
        self.config = config
        self.terminator = config.proxy.terminator.encode("latin-1")
        self._use(matcher)
        self.log = log
        self.config_path = config_path
        self.warn = warn
        self.admin = admin
        self.sequencer = Sequencer(seq=log.last_seq)
        self.listen_tls, self.upstream_tls = tls_contexts(config, where)
        self.metrics = Metrics(self)
        self.open_connections = 0
        self.total_connections = 0
        self.refused_connections = 0
        self.upstream_errors = 0
        self.tls_failures = 0
        self.dropped_unlogged = 0
        self.reloads = 0
        self.admin_port = 0
        self._conn_ids = count(1)
        self._conns: set[_Conn] = set()
        self.listeners: list[trio.SocketListener] = []
        self._stop = trio.Event()

    # ------------------------------------------------------------------ serving

    @property
    def port(self) -> int:
        return self.listeners[0].socket.getsockname()[1]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when installed)."""
        self.listeners = await open_listeners(self.config.proxy.listen)
        async with trio.open_nursery() as conns:
            try:
                async with trio.open_nursery() as accept:
                    for listener in self.listeners:
                        accept.start_soon(self._accept_loop, listener, conns)
                    accept.start_soon(self._seal_ticker)
                    if self.admin:
                        await accept.start(serve_admin, self, await open_listeners(self.config.admin.listen))
                    task_status.started(self)
                    await self._stop.wait()
                    accept.cancel_scope.cancel()
            finally:
                # Stopped, or cancelled from outside: either way no new connections,
                # and each connection's sends under way get SEND_GRACE to finish the
                # chunk in hand (they are shielded and would otherwise wait forever).
                for listener in self.listeners:
                    with trio.CancelScope(shield=True):
                        await listener.aclose()
                for state in list(self._conns):
                    state.close(SEND_GRACE)
                conns.cancel_scope.cancel()

    def stop(self) -> None:
        self._stop.set()

    def _use(self, matcher: Matcher) -> None:
        """Put a policy in force.  The matcher also writes its ER replies (the engine
        writes them with the decisions), so a chunk's replies are always written
        under the policy that decided it."""
        self.matcher = matcher

    async def _seal_ticker(self) -> None:
        """A seal at least every second while lines are written."""
        while True:
            await trio.sleep(0.25)
            self.log.tick()

    async def _accept_loop(self, listener: trio.SocketListener, conns: trio.Nursery) -> None:
        while True:
            stream = await listener.accept()
            conns.start_soon(self._handle, stream)

    def reload(self) -> bool:
        """Re-read the config file's policy; on error keep the running one."""
        if self.config_path is None:
            return False
        try:
            config = load_config(self.config_path)
            matcher = Matcher(compile_policy(config, self.config_path))
        except ConfigError as exc:
            self.warn(f"reload refused, running policy {self.matcher.rev[:12]} kept: {exc}")
            return False
        self._use(matcher)
        self.reloads += 1
        self.warn(f"policy reloaded: rev {matcher.rev[:12]} ({matcher.mode})")
        return True

    def reopen_log(self) -> None:
        try:
            self.log.reopen()
        except OSError as exc:
            self.warn(f"cannot reopen the log {self.log.path}: {exc.strerror or exc}")
        else:
            self.warn(f"log reopened: {self.log.path}")

    async def handle_signals(self) -> None:
        signals = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
        with trio.open_signal_receiver(*signals) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.reload()
                elif signum == signal.SIGUSR1:
                    self.reopen_log()
                elif not self._stop.is_set():
                    self.warn("stopping: no new connections, finishing frames in flight "
                              "(a second signal exits at once)")  # fmt: skip
                    self.stop()
                else:
                    self.warn("second signal: exiting at once")
                    os._exit(1)

    # -------------------------------------------------------------- connections

    async def _handle(self, client: trio.SocketStream) -> None:
        proxy_cfg = self.config.proxy
        if self.open_connections >= proxy_cfg.max_connections:
            self.refused_connections += 1
            self.warn(f"connection refused: max_connections ({proxy_cfg.max_connections}) open")
            await client.aclose()
            return
        self.open_connections += 1
        self.total_connections += 1
        conn = next(self._conn_ids)
        try:
            try:
                host, port = client.socket.getpeername()[:2]
                peer = f"{host}:{port}"
            except OSError:
                peer = None
            listen_side: trio.abc.Stream = client
            if self.listen_tls is not None:
                listen_side = trio.SSLStream(client, self.listen_tls, server_side=True)
                if not await self._handshake(listen_side, conn, f"client {peer}"):
                    await trio.aclose_forcefully(client)
                    return
            upstream = await self._connect_upstream(conn)
            if upstream is None:
                await trio.aclose_forcefully(listen_side)
                return
            await self._pump_pair(conn, peer, listen_side, upstream)
        finally:
            self.open_connections -= 1

    async def _handshake(self, stream: trio.SSLStream, conn: int, who: str) -> bool:
        try:
            with trio.fail_after(self.config.proxy.connect_timeout):
                await stream.do_handshake()
            return True
        except (trio.BrokenResourceError, trio.TooSlowError, ssl.SSLError) as exc:
            self.tls_failures += 1
            cause = exc.__cause__ or exc
            self.warn(f"conn {conn}: TLS handshake with {who} failed ({type(cause).__name__}: {cause}); closed")
            return False

    async def _connect_upstream(self, conn: int) -> trio.abc.Stream | None:
        proxy_cfg = self.config.proxy
        up_host, up_port = split_hostport(proxy_cfg.upstream)
        try:
            with trio.fail_after(proxy_cfg.connect_timeout):
                upstream: trio.abc.Stream = await trio.open_tcp_stream(up_host, up_port)
        except (OSError, trio.TooSlowError) as exc:
            self.upstream_errors += 1
            self.warn(f"conn {conn}: upstream {proxy_cfg.upstream} unreachable ({exc or 'timeout'}); "
                      "client closed")  # fmt: skip
            return None
        if self.upstream_tls is not None:
            upstream = trio.SSLStream(upstream, self.upstream_tls, server_hostname=up_host)
            if not await self._handshake(upstream, conn, f"upstream {proxy_cfg.upstream}"):
                self.upstream_errors += 1
                await trio.aclose_forcefully(upstream)
                return None
        return upstream

    async def _pump_pair(self, conn: int, peer: str | None, client: trio.abc.Stream,
                         upstream: trio.abc.Stream) -> None:  # fmt: skip
        proxy_cfg = self.config.proxy
        args = (proxy_cfg.framing, proxy_cfg.max_frame, self.terminator, self.sequencer)
        engine_in = Engine("in", conn, peer, *args)
        engine_out = Engine("out", conn, peer, *args)
        state = _Conn(conn, trio.current_time(), (engine_in, engine_out))
        client_lock = trio.StrictFIFOLock()
        upstream_lock = trio.StrictFIFOLock()
        self._conns.add(state)
        try:
            async with client, upstream:
                async with trio.open_nursery() as nursery:
                    state.scope = nursery.cancel_scope

                    async def pump(src, engine, dst, dst_lock, src_lock) -> None:
                        try:
                            await self._pump(src, engine, dst, dst_lock, src_lock, state)
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            pass
                        state.close(SEND_GRACE)  # one side is done: close the pair

                    nursery.start_soon(pump, client, engine_in, upstream, upstream_lock, client_lock)
                    nursery.start_soon(pump, upstream, engine_out, client, client_lock, upstream_lock)
                    nursery.start_soon(self._watch, state)
        finally:
            self._conns.discard(state)
            self._log_incomplete(engine_in, engine_out)

    def _log_incomplete(self, *engines: Engine) -> None:
        """A frame cut off by the close is logged as rejected, never forwarded."""
        records = [incomplete_record(e, self.sequencer, self.matcher, utc_timestamp())
                   for e in engines if e.pending]  # fmt: skip
        if records:
            try:
                self.log.write(records)
            except LogUnavailable as exc:
                self.sequencer.seq -= len(records)
                self.warn(f"{exc}; could not log {len(records)} incomplete frame(s)")

    async def _watch(self, state: _Conn) -> None:
        """Close a connection idle for idle_timeout (nothing received either way,
        which includes a reader that stopped reading), or holding a partial frame open
        for frame_timeout (a slowloris trickling bytes is not idle)."""
        cfg = self.config.proxy
        while True:
            await trio.sleep(WATCH_EVERY)
            now = trio.current_time()
            if now - state.last_activity >= cfg.idle_timeout:
                self.warn(f"conn {state.conn}: idle for {cfg.idle_timeout:g}s; closed")
                state.close(0)
                return
            if state.frame_since is not None and now - state.frame_since >= cfg.frame_timeout:
                self.warn(f"conn {state.conn}: a frame held incomplete for {cfg.frame_timeout:g}s; closed")
                state.close(0)
                return

    async def _pump(self, src, engine, dst, dst_lock, src_lock, state: _Conn) -> None:
        log = self.log
        full = False  # the last receive filled the buffer: more is likely waiting
        while True:
            data = await receive_chunk(src, RECEIVE_SIZE, full)
            if not data:
                return
            full = len(data) == RECEIVE_SIZE
            start = trio.current_time()
            state.last_activity = start
            batch = engine.feed(data, self.matcher)  # stamped with the clock in the engine
            e_in, e_out = state.engines
            if e_in.busy or e_out.busy:
                if state.frame_since is None:
                    state.frame_since = start
            else:
                state.frame_since = None
            if not batch.count:
                continue
            try:
                if log.broken:
                    log.reopen()  # a log that failed may be writable again
                log.write_lines(batch.lines, batch.count, batch.last_seq)
            except (LogUnavailable, OSError) as exc:
                # Fail closed: none of this batch is forwarded or answered, and its
                # sequence numbers are handed out again.
                self.sequencer.seq -= batch.count
                self.dropped_unlogged += batch.count
                self.warn(f"{exc}; {batch.count} message(s) dropped, not forwarded")
                continue
            replies = batch.replies
            whole = True
            if batch.forward:
                whole = await send_decided(state, dst, dst_lock, batch.forward)
            if replies and whole:
                whole = await send_decided(state, src, src_lock, replies)
            self.metrics.latency.observe(trio.current_time() - start)
            if not whole:
                self.warn(f"conn {state.conn}: closed before a send of {batch.count} decided "
                          "message(s) finished; the receiver may hold only part of it")  # fmt: skip
                raise trio.BrokenResourceError("send did not finish before the close")


async def send_decided(state: _Conn, stream: trio.abc.Stream, lock: trio.StrictFIFOLock,
                       data: bytes) -> bool:
    """Send all of ``data``, decided and logged, on ``stream``; False if the pair's close
    cut it short (its grace ran out).

    ``lock`` is the stream's: the two directions' pumps can both send to the listen side
    (a forward and an ER reply), and neither may put bytes inside the other's.  A send
    is shielded from cancellation, since a decided frame goes whole or the pair is
    closed, and only a close gives it a deadline.

    On plain TCP, while the pair is open and nobody else is sending, the bytes go
    straight to the socket, which on loopback or a fast link nearly always takes them
    all, without taking the lock: trio's lock, cancel scope and ``send_all`` each pass
    through its scheduler or its bookkeeping even when nothing blocks, and for a chunk
    of one message those passes cost more than deciding it (bench/README.md).
    Whatever the socket does not take goes the general way, under the lock.  The
    pump's next receive (``receive_chunk``) is still a schedule point every chunk, so
    other connections get their turn and a close is seen.
    """
    if not lock.locked() and state.send_deadline == math.inf:
        # No await between the check and the write, so no other task can run, let
        # alone send: the lock is taken only if part of the data must wait.
        sent = write_now(stream, data)
        if sent == len(data):
            return True
        lock.acquire_nowait()  # still free: nothing has run since the check
        try:
            rest = memoryview(data)[sent:] if sent else data
            return await _send_shielded(state, stream, rest, None)
        finally:
            lock.release()
    return await _send_shielded(state, stream, data, lock)


def _open_fd(stream: trio.SocketStream) -> int:
    """The stream's socket descriptor; ClosedResourceError once it is closed."""
    fd = stream.socket.fileno()
    if fd < 0:
        raise trio.ClosedResourceError("the socket was already closed")
    return fd


async def receive_chunk(stream: trio.abc.Stream, size: int, more_waiting: bool) -> bytes:
    """``stream.receive_some(size)``; on plain TCP, when ``more_waiting`` is false,
    the socket is waited on first and read once it is readable.

    trio's ``receive_some`` tries a read first and waits only if it fails: the right
    order when data is waiting (a full load, where the last read filled the buffer),
    but at a modest rate the pump has nearly always caught up, and that first read
    fails every chunk, costing a system call and an exception for nothing
    (bench/README.md).  Waiting is a schedule point either way, and a close by
    another task wakes the wait with ``ClosedResourceError`` as trio's own would.
    """
    if more_waiting or type(stream) is not trio.SocketStream:
        return await stream.receive_some(size)
    while True:
        fd = _open_fd(stream)
        # a close during the wait raises ClosedResourceError here (trio notifies waiters)
        await trio.lowlevel.wait_readable(stream.socket)
        try:
            return os.read(fd, size)
        except BlockingIOError:
            continue  # woken with nothing to read after all: wait again
        except OSError as exc:
            raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


def write_now(stream: trio.abc.Stream, data: bytes) -> int:
    """Write what a plain TCP socket takes of ``data`` without waiting: 0 for another
    kind of stream (TLS) or a full socket buffer."""
    if type(stream) is not trio.SocketStream:
        return 0
    try:
        return os.write(_open_fd(stream), data)
    except BlockingIOError:
        return 0
    except OSError as exc:
        raise trio.BrokenResourceError(f"socket connection broken: {exc}") from exc


async def _send_shielded(state: _Conn, stream: trio.abc.Stream, data: bytes | memoryview,
                         lock: trio.StrictFIFOLock | None) -> bool:
    """``send_all`` under a shield that only a close's deadline breaks, taking ``lock``
    first unless the caller holds it (None)."""
    with trio.CancelScope(shield=True, deadline=state.send_deadline) as scope:
        state.sends.add(scope)
        try:
            if lock is None:
                await stream.send_all(data)
            else:
                async with lock:
                    await stream.send_all(data)
        finally:
            state.sends.discard(scope)
    return not scope.cancelled_caught


def open_log(config: Config) -> DecisionLog:
    cfg = config.log
    return DecisionLog(cfg.path, rotate_bytes=cfg.rotate_bytes, seal_every=cfg.seal_every,
                       key=read_key(cfg.key_file), fsync=cfg.fsync, warn=_warn)  # fmt: skip


async def serve(config: Config, config_path: str | None = None) -> None:
    """``stategate run``: the proxy with signal handling, until SIGTERM or SIGINT."""
    matcher = Matcher(compile_policy(config, config_path or "<config>"))
    with open_log(config) as log:
        proxy = Proxy(config, matcher, log, config_path=config_path, admin=True)
        async with trio.open_nursery() as nursery:
            # Signals stay handled until the proxy has drained, so a second one
            # during the drain still means "exit at once".
            nursery.start_soon(proxy.handle_signals)
            async with trio.open_nursery() as serving:
                await serving.start(proxy.run)
                _warn(
                    f"listening on {config.proxy.listen} (port {proxy.port}{', TLS' if proxy.listen_tls else ''}), "
                    f"upstream {config.proxy.upstream}{' (TLS)' if proxy.upstream_tls else ''}, "
                    f"policy rev {matcher.rev[:12]} ({matcher.mode}), log {config.log.path}, "
                    f"admin http://{config.admin.listen}/metrics"
                )
            nursery.cancel_scope.cancel()
