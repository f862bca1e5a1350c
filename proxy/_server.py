"""The trio layer: accept, connect upstream, pump both directions, shut down.

All protocol work happens in the compiled :class:`~proxy._fastmatch.Engine`; this
module only moves bytes.  For each received chunk it makes one call into the engine,
writes the batch's log lines, and only then forwards the allowed bytes and sends any
ER replies.  A chunk is decided wholly under one policy revision: the one current
when the chunk arrived.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from itertools import count

import trio

from ._config import Config, ConfigError, load_config
from ._fastmatch import Engine, Matcher
from ._log import DecisionLog, LogUnavailable, read_key
from ._pipeline import Sequencer, utc_timestamp
from ._policy import compile_policy
from ._reply import deny_reply

RECEIVE_SIZE = 65536
#: How long a forward may take once its decision is logged, even during shutdown.
SEND_GRACE = 5.0


def split_hostport(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host.strip("[]"), int(port)


def _warn(message: str) -> None:
    print(f"stategate: {message}", file=sys.stderr, flush=True)


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
    ) -> None:
        if not config.proxy.upstream:
            raise ConfigError(f"{config_path or '<config>'}: `proxy.upstream` is required to run")
        self.config = config
        self.matcher = matcher
        self.log = log
        self.config_path = config_path
        self.warn = warn
        self.sequencer = Sequencer(seq=log.last_seq)
        self.terminator = config.proxy.terminator.encode("latin-1")
        self.open_connections = 0
        self.total_connections = 0
        self.refused_connections = 0
        self.upstream_errors = 0
        self._conn_ids = count(1)
        self.listeners: list[trio.SocketListener] = []
        self._stop = trio.Event()

    # ------------------------------------------------------------------ serving

    @property
    def port(self) -> int:
        return self.listeners[0].socket.getsockname()[1]

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        """Serve until :meth:`stop` (or SIGTERM/SIGINT when installed)."""
        host, port = split_hostport(self.config.proxy.listen)
        self.listeners = await trio.open_tcp_listeners(port, host=host or None)
        async with trio.open_nursery() as conns:
            async with trio.open_nursery() as accept:
                for listener in self.listeners:
                    accept.start_soon(self._accept_loop, listener, conns)
                accept.start_soon(self._seal_ticker)
                task_status.started(self)
                await self._stop.wait()
                accept.cancel_scope.cancel()
            for listener in self.listeners:
                await listener.aclose()
            # Connections finish the chunk in hand; then they are closed.
            conns.cancel_scope.cancel()

    def stop(self) -> None:
        self._stop.set()

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
        self.matcher = matcher
        self.warn(f"policy reloaded: rev {matcher.rev[:12]}")
        return True

    async def handle_signals(self) -> None:
        signals = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
        with trio.open_signal_receiver(*signals) as sigs:
            async for signum in sigs:
                if signum == signal.SIGHUP:
                    self.reload()
                elif signum == signal.SIGUSR1:
                    self._reopen_log()
                else:
                    self.warn("stopping: no new connections, finishing frames in flight")
                    self.stop()
                    return

    def _reopen_log(self) -> None:
        try:
            self.log.reopen()
        except OSError as exc:
            self.warn(f"cannot reopen the log {self.log.path}: {exc.strerror or exc}")
        else:
            self.warn(f"log reopened: {self.log.path}")

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
            host, port = client.socket.getpeername()[:2]
            peer = f"{host}:{port}"
        except OSError:
            peer = None
        try:
            up_host, up_port = split_hostport(proxy_cfg.upstream)
            try:
                with trio.fail_after(proxy_cfg.connect_timeout):
                    upstream = await trio.open_tcp_stream(up_host, up_port)
            except (OSError, trio.TooSlowError) as exc:
                self.upstream_errors += 1
                self.warn(f"conn {conn}: upstream {proxy_cfg.upstream} unreachable ({exc}); closed")
                await client.aclose()
                return
            await self._pump_pair(conn, peer, client, upstream)
        finally:
            self.open_connections -= 1

    async def _pump_pair(
        self, conn: int, peer: str | None, client: trio.SocketStream, upstream: trio.SocketStream
    ) -> None:
        proxy_cfg = self.config.proxy
        args = (proxy_cfg.framing, proxy_cfg.max_frame, self.terminator, self.sequencer)
        engine_in = Engine("in", conn, peer, *args)
        engine_out = Engine("out", conn, peer, *args)
        client_lock = trio.StrictFIFOLock()
        upstream_lock = trio.StrictFIFOLock()
        activity = [trio.current_time()]
        async with client, upstream:
            async with trio.open_nursery() as nursery:

                async def pump(src, engine, dst, dst_lock, src_lock) -> None:
                    try:
                        await self._pump(src, engine, dst, dst_lock, src_lock, activity)
                    except (trio.BrokenResourceError, trio.ClosedResourceError):
                        pass
                    nursery.cancel_scope.cancel()

                nursery.start_soon(pump, client, engine_in, upstream, upstream_lock, client_lock)
                nursery.start_soon(pump, upstream, engine_out, client, client_lock, upstream_lock)
                nursery.start_soon(self._idle_watch, activity, nursery.cancel_scope, conn)

    async def _idle_watch(self, activity: list[float], scope: trio.CancelScope, conn: int) -> None:
        timeout = self.config.proxy.idle_timeout
        while True:
            deadline = activity[0] + timeout
            if trio.current_time() >= deadline:
                self.warn(f"conn {conn}: idle for {timeout:g}s; closed")
                scope.cancel()
                return
            await trio.sleep_until(deadline)

    async def _pump(self, src, engine, dst, dst_lock, src_lock, activity) -> None:
        proxy_cfg = self.config.proxy
        while True:
            data = await src.receive_some(RECEIVE_SIZE)
            if not data:
                return
            activity[0] = trio.current_time()
            matcher = self.matcher
            batch = engine.feed(data, matcher, utc_timestamp())
            if not batch.records:
                continue
            try:
                self.log.write(batch.records)
            except LogUnavailable as exc:
                # Fail closed: none of this batch is forwarded or answered, and its
                # sequence numbers are handed out again.
                self.sequencer.seq -= len(batch.records)
                self.warn(f"{exc}; {len(batch.records)} message(s) dropped, not forwarded")
                continue
            replies = b"".join(
                deny_reply(rec, payload, matcher.policy, proxy_cfg.framing, self.terminator)
                for rec, payload in batch.denials
            )
            with trio.CancelScope(shield=True) as scope:
                scope.deadline = trio.current_time() + SEND_GRACE
                if batch.forward:
                    async with dst_lock:
                        await dst.send_all(batch.forward)
                if replies:
                    async with src_lock:
                        await src.send_all(replies)
            if scope.cancelled_caught:
                raise trio.BrokenResourceError("send did not finish in time")


async def serve(config: Config, config_path: str | None = None) -> None:
    """``stategate run``: the proxy with signal handling, until SIGTERM or SIGINT."""
    matcher = Matcher(compile_policy(config, config_path or "<config>"))
    cfg = config.log
    log = DecisionLog(cfg.path, rotate_bytes=cfg.rotate_bytes, seal_every=cfg.seal_every,
                      key=read_key(cfg.key_file), fsync=cfg.fsync, warn=_warn)  # fmt: skip
    with log:
        proxy = Proxy(config, matcher, log, config_path=config_path)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            host, _ = split_hostport(config.proxy.listen)
            _warn(
                f"listening on {host}:{proxy.port}, upstream {config.proxy.upstream}, "
                f"policy rev {matcher.rev[:12]} ({matcher.mode}), log {config.log.path}"
            )
            await proxy.handle_signals()
