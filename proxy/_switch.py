"""A simulated state switch for the demo and the tests.

It listens on loopback, frames what arrives, and answers each query it knows (DQ, RQ,
KQ, IQ ...) with a synthetic response in the query's format, addressed back to the
originator.  It records every payload it received, byte for byte, so tests can check
exactly what the proxy let through.
"""

from __future__ import annotations

import hashlib
import random
import ssl

import trio

from ._framing import frame, make_framer
from ._traffic import switch_response


class SimulatedSwitch:
    def __init__(
        self,
        framing: str = "len32",
        terminator: bytes = b"\r\n\x7f",
        state_ori: str = "CA0000000",
        seed: int = 0,
        answer: bool = True,
        tls: ssl.SSLContext | None = None,
        keep_frames: bool = True,
    ) -> None:
        self.framing = framing
        self.terminator = terminator
        self.state_ori = state_ori
        self.answer = answer
        self.tls = tls  # serve TLS with this server-side context
        self.rng = random.Random(seed)
        self.received: list[bytes] = []  # raw frames, in arrival order
        self.keep_frames = keep_frames  # False: only counts and digests (long soaks)
        self.by_conn: list[list[bytes]] = []  # raw frames per connection, in order
        #: SHA-256 of each connection's raw frames, in arrival order.
        self.digests: list[hashlib._Hash] = []
        self.frames_received = 0
        self.raw_bytes = bytearray()  # everything received, unframed
        self.responses_sent = 0
        self.connections = 0
        self.port = 0

    async def run(self, *, task_status=trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            task_status.started(self.port)
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, stream: trio.abc.Stream) -> None:
        if self.tls is not None:
            stream = trio.SSLStream(stream, self.tls, server_side=True)
        self.connections += 1
        mine: list[bytes] = []
        self.by_conn.append(mine)
        digest = hashlib.sha256()
        self.digests.append(digest)
        framer = make_framer(self.framing, 1 << 24, self.terminator)
        async with stream:
            try:
                while data := await stream.receive_some(65536):
                    if self.keep_frames:
                        self.raw_bytes += data
                    out = []
                    for event in framer.feed(data):
                        if event[0] != "frame":
                            continue
                        self.frames_received += 1
                        digest.update(event[2])
                        if self.keep_frames:
                            self.received.append(event[2])
                            mine.append(event[2])
                        reply = self._respond(event[1])
                        if reply is not None:
                            out.append(frame(reply, self.framing, self.terminator))
                    if out:
                        self.responses_sent += len(out)
                        await stream.send_all(b"".join(out))
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    def _respond(self, payload: bytes) -> bytes | None:
        if not self.answer:
            return None
        return switch_response(payload, self.state_ori, self.rng)
