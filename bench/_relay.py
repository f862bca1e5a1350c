"""A minimal trio TCP relay, one upstream connection per accepted connection, bytes
copied both ways unchanged: stategate's I/O layer doing none of its work, so the e2e
benchmark shows what trio itself costs.

It sends as stategate's pump does (``proxy._server.send_decided``): straight to the
socket while it takes the bytes (``proxy._server.write_now``), through ``send_all`` for
the rest.  Each direction has one sender here, so no lock is needed.

    python bench/_relay.py LISTEN_PORT UPSTREAM_PORT
"""

from __future__ import annotations

import sys

import trio

from proxy._server import write_now


async def pipe(src: trio.SocketStream, dst: trio.SocketStream) -> None:
    try:
        while data := await src.receive_some(1 << 18):
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
