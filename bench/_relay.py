"""A minimal trio TCP relay, one upstream connection per accepted connection, bytes
copied both ways unchanged: stategate's I/O layer doing none of its work, so the e2e
benchmark shows what trio itself costs.

It receives and sends as stategate's pump does: chunks of the same size, waiting for
the socket before reading it unless the last read filled the buffer
(``proxy._server.receive_chunk``), and sending straight to the socket while it takes
the bytes (``proxy._server.write_now``, as ``send_decided`` does), through
``send_all`` for the rest.  Each direction has one sender here, so no lock is needed.

    python bench/_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import sys

import trio

from proxy._server import RECEIVE_SIZE, receive_chunk, write_now


async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    full = False
    try:
        while data := await receive_chunk(src, RECEIVE_SIZE, full):
            full = len(data) == RECEIVE_SIZE
            sent = write_now(dst, data)
            if sent < len(data):
                await dst.send_all(memoryview(data)[sent:])
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def main(listen: int, upstream: int) -> None:
    async def handle(client: trio.SocketStream) -> None:
        server = await trio.open_tcp_stream("127.0.0.1", upstream)
        async with client, server:
            async with trio.open_nursery() as n:
                n.start_soon(pipe, client, server)
                await pipe(server, client)
                n.cancel_scope.cancel()

    await trio.serve_tcp(handle, listen, host="127.0.0.1")


if __name__ == "__main__":
    trio.run(main, int(sys.argv[1]), int(sys.argv[2]))
