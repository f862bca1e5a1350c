"""Faults, limits and the admin endpoint, over real loopback sockets (issue 5)."""

from __future__ import annotations

import contextlib
import os
import random
from functools import partial

import pytest
import trio
from proxy._fastmatch import Matcher

from proxy._config import parse_config
from proxy._decode import decode
from proxy._framing import frame
from proxy._policy import compile_policy
from proxy._traffic import TrafficGenerator

from .conftest import eof_within, http_get, policy_text, read_log, running_proxy

Q = b"RQ.AZ0070000.CA.*C1.TXT\nLIC/ZZ12345"
DENIED = b"DQ.VTICE0900.CA.*C2.TXT\nOLN/S1234567"


@contextlib.asynccontextmanager
async def upstream_running(handler):
    """A bare upstream on loopback that runs ``handler`` per connection; yields its port."""
    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
        yield listeners[0].socket.getsockname()[1]
        nursery.cancel_scope.cancel()


async def test_metrics_and_healthz(tmp_path):
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        async with h.client() as c:
            await c.send(Q, DENIED, b"garbage")
            await h.wait_log(3)
            await c.receive(1)
            port = h.proxy.admin_port
            status, body = await http_get(port, "/metrics")
        text = body.decode()
        assert status == 200
        assert 'stategate_decisions_total{action="deny",direction="in",rule="no-dmv-for-dhs"} 1.0' in text
        assert 'stategate_decisions_total{action="allow",direction="in",rule="default"} 1.0' in text
        assert 'stategate_rejects_total{reason="malformed"} 1.0' in text
        assert "stategate_connections_open 1.0" in text
        assert "stategate_connections_total 1.0" in text
        assert "stategate_log_lines_total 3.0" in text
        assert "stategate_log_writable 1.0" in text
        assert "stategate_decision_latency_seconds_count 1.0" in text
        assert f'stategate_policy{{mode="enforce",rev="{h.proxy.matcher.rev}"}} 1.0' in text
        assert await http_get(port, "/healthz") == (200, b"ok\n")
        assert (await http_get(port, "/"))[0] == 404
        assert (await http_get(port, "/metrics/../etc"))[0] == 404
        assert (await http_get(port, "/metrics", "POST"))[0] == 405


async def test_upstream_closing_mid_stream_closes_the_client(tmp_path):
    async def upstream(stream: trio.SocketStream) -> None:
        await stream.receive_some(10)  # read a little, then hang up
        await stream.aclose()

    async with upstream_running(upstream) as up_port:
        async with running_proxy(tmp_path, policy_text(), upstream_port=up_port) as h:
            async with h.client() as c:
                await c.send(Q)
                assert await eof_within(c.stream, 5)
                # the proxy keeps serving others
                async with h.client() as c2:
                    await c2.send(Q)
                    assert await eof_within(c2.stream, 5)
            assert h.proxy.open_connections == 0


async def test_listen_side_closing_mid_frame_logs_an_incomplete_reject(tmp_path):
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        async with h.client() as c:
            whole = frame(Q, "len32")
            await c.send_raw(whole + frame(Q, "len32")[:15])
            await h.wait_log(1)
        log = await h.wait_log(2)
        assert [(r["action"], r["rule"], r["bytes"]) for r in log] == [
            ("allow", "default", len(Q)), ("reject", "incomplete", 15)]  # what had arrived of it
        assert h.switch.received == [whole]


async def test_slow_upstream_reader_gets_backpressure_not_buffering(tmp_path):
    async def never_reads(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with upstream_running(never_reads) as up_port:
        async with running_proxy(tmp_path, policy_text(), upstream_port=up_port) as h:
            async with h.client() as c:
                sent = 0
                chunk = b"".join(frame(Q, "len32") for _ in range(2000))

                async def flood() -> None:
                    nonlocal sent
                    while True:
                        await c.stream.send_all(chunk)
                        sent += len(chunk)

                async with trio.open_nursery() as n:
                    n.start_soon(flood)
                    await trio.sleep(1.5)
                    first = sent
                    await trio.sleep(1.5)
                    second = sent
                    n.cancel_scope.cancel()
                # The client stalls: what it could send is bounded by socket buffers,
                # not growing, and the proxy holds at most one chunk undecided.
                assert second == first
                assert first < 64 * 1024 * 1024
                assert h.proxy.open_connections == 1


async def test_forwards_and_er_replies_to_a_slow_client_never_interleave(tmp_path):
    """Both pumps send to the listen side: the upstream's responses and the ER replies
    to denied queries.  The client reads nothing at first, so its socket fills and
    sends go partly straight to the socket and partly through trio while the other
    pump waits for the lock; every frame the client finally reads is whole."""
    response = b"DR.CA0000000.AZ0070000.TXT\nNAM/SAMPLE,ALEX"
    responses, queries = 40_000, 8_000

    async def chatty(stream: trio.SocketStream) -> None:
        rng = random.Random(4)
        left = responses
        with contextlib.suppress(trio.BrokenResourceError):
            while left:
                k = min(left, rng.randint(1, 3000))
                await stream.send_all(frame(response, "len32") * k)
                left -= k
            await trio.sleep_forever()

    async with upstream_running(chatty) as up_port:
        async with running_proxy(tmp_path, policy_text(), upstream_port=up_port) as h:
            async with h.client() as c:

                async def ask() -> None:
                    rng = random.Random(5)
                    left = queries
                    while left:
                        k = min(left, rng.randint(1, 500))
                        await c.stream.send_all(frame(DENIED, "len32") * k)
                        left -= k

                with trio.fail_after(60):
                    async with trio.open_nursery() as n:
                        n.start_soon(ask)
                        await trio.sleep(1.0)  # not reading: the listen side's buffers fill
                        await c.receive(responses + queries)
    frames = c.frames
    assert len(frames) == responses + queries
    assert frames.count(response) == responses
    ers = [f for f in frames if f != response]
    assert all(f.startswith(b"ER.CA0000000.VTICE0900.*C2.TXT\n") for f in ers)
    assert len(ers) == queries


async def test_slow_client_reader_stalls_the_upstream(tmp_path):
    response = frame(b"DR.CA0000000.AZ0070000.TXT\nNAM/SAMPLE,ALEX", "len32")
    sent = 0

    async def chatty(stream: trio.SocketStream) -> None:
        nonlocal sent
        chunk = response * 2000
        with trio.move_on_after(10):
            try:
                while True:
                    await stream.send_all(chunk)
                    sent += len(chunk)
            except trio.BrokenResourceError:
                pass  # the proxy closed the pair at the end of the test

    async with upstream_running(chatty) as up_port:
        async with running_proxy(tmp_path, policy_text(), upstream_port=up_port) as h:
            async with h.client():  # never reads
                await trio.sleep(1.5)
                first = sent
                await trio.sleep(1.5)
                assert sent == first and first < 64 * 1024 * 1024


async def test_idle_timeout_and_max_connections(tmp_path):
    extra = "idle_timeout = 0.6\nmax_connections = 2"
    async with running_proxy(tmp_path, policy_text(), proxy_extra=extra, answer=False) as h:
        async with h.client() as a, h.client() as b:
            await trio.sleep(0.1)
            async with h.client() as over:
                assert await eof_within(over.stream, 2)  # accepted and closed at once
            assert h.proxy.refused_connections == 1
            await b.send(Q)  # b stays active; a goes idle
            assert await eof_within(a.stream, 3)
        status, body = await http_get(h.proxy.admin_port, "/metrics")
        assert "stategate_connections_refused_total 1.0" in body.decode()


async def test_slowloris_partial_frame_is_cut_off(tmp_path):
    extra = "idle_timeout = 100\nframe_timeout = 0.8"
    async with running_proxy(tmp_path, policy_text(), proxy_extra=extra, answer=False) as h:
        async with h.client() as c:
            data = frame(Q, "len32")
            closed = False
            with trio.move_on_after(5):
                for i in range(len(data) - 1):  # one byte at a time, never the last
                    try:
                        await c.send_raw(data[i : i + 1])
                    except (trio.BrokenResourceError, OSError):
                        closed = True
                        break
                    await trio.sleep(0.1)
                closed = closed or await eof_within(c.stream, 3)
            assert closed
        log = await h.wait_log(1)
        assert [(r["action"], r["rule"]) for r in log] == [("reject", "incomplete")]
        assert h.switch.received == []


async def test_unwritable_log_fails_closed_and_resumes(tmp_path):
    link = tmp_path / "decisions.jsonl"
    link.symlink_to("/dev/full")
    warnings: list[str] = []
    async with running_proxy(tmp_path, policy_text(), log_path=link, answer=False, warnings=warnings) as h:
        async with h.client() as c:
            await c.send(Q)
            await trio.sleep(0.5)
            assert h.switch.received == []  # not logged, so not forwarded
            assert any("No space left" in w and "not forwarded" in w for w in warnings)
            status, _ = await http_get(h.proxy.admin_port, "/healthz")
            assert status == 503
            _, body = await http_get(h.proxy.admin_port, "/metrics")
            assert "stategate_log_errors_total 1.0" in body.decode()
            assert "stategate_messages_dropped_unlogged_total 1.0" in body.decode()
            assert "stategate_log_writable 0.0" in body.decode()
            # The disk comes back: the next message is logged and forwarded.
            real = tmp_path / "real.jsonl"
            tmp_link = tmp_path / "new-link"
            tmp_link.symlink_to(real)
            os.replace(tmp_link, link)
            await c.send(Q)
            with trio.fail_after(5):
                while not h.switch.received:
                    await trio.sleep(0.02)
            assert h.switch.received == [frame(Q, "len32")]
            [rec] = read_log(real)
            assert (rec["seq"], rec["action"], rec["forwarded"]) == (1, "allow", True)
            assert (await http_get(h.proxy.admin_port, "/healthz"))[0] == 200


async def test_hot_reload_under_traffic(tmp_path):
    """Every message is decided wholly by the old or wholly by the new policy, its
    rev says which, and no connection or message is lost."""
    config_file = tmp_path / "p.toml"
    old_text = policy_text()
    new_text = old_text.replace('default = "allow"', 'default = "deny"')
    config_file.write_text(old_text)
    gen = TrafficGenerator(21, dhs_share=0.2, malformed_share=0.01)
    per_client = [list(gen.queries(1500)) for _ in range(4)]
    async with running_proxy(tmp_path, old_text, answer=False, config_path=str(config_file)) as h:
        old_rev = h.proxy.matcher.rev
        eofs = []

        reloaded = trio.Event()

        async def client(msgs) -> None:
            async with h.client() as c:
                for i in range(0, len(msgs), 25):
                    if i >= len(msgs) // 2:
                        # the second half after the reload, so that both policies decide
                        # some (a fixed sleep before the reload raced a fast proxy); at
                        # once when the reload is done, whatever the halves' sizes
                        await reloaded.wait()
                    await c.send(*[m.payload for m in msgs[i : i + 25]])
                    await trio.sleep(0.002)
                eofs.append(await eof_within(c.stream, 0.3))

        async with trio.open_nursery() as n:
            for msgs in per_client:
                n.start_soon(client, msgs)
            await h.wait_log(500)  # under traffic: the old policy has decided some
            config_file.write_text(new_text)
            assert h.proxy.reload()
            reloaded.set()
        new_rev = h.proxy.matcher.rev
        log = await h.wait_log(6000)
    assert eofs == [False] * 4  # no connection dropped
    assert len(log) == 6000  # no message lost
    revs = [r["rev"] for r in log]
    assert set(revs) == {old_rev, new_rev} and revs.index(new_rev) > 0
    assert revs == sorted(revs, key=lambda r: r == new_rev)  # old ones all before new ones
    # Each line is what its own policy decides.
    text = '[proxy]\nupstream = "127.0.0.1:1"\n'
    matchers = {old_rev: Matcher(compile_policy(parse_config(text + old_text))),
                new_rev: Matcher(compile_policy(parse_config(text + new_text)))}  # fmt: skip
    assert set(matchers) == {old_rev, new_rev}
    from proxy._types import Message

    for r in log:
        if r["action"] == "reject":
            continue
        msg = Message(r["fmt"], r["mke"], r["ori"], tuple(r["dst"]), r["ctl"], r["pur"], r["rsn"], r["atn"], r["imq"])
        action, rule, *_ = matchers[r["rev"]].decide(msg, r["dir"])
        assert (action, rule) == (r["action"], r["rule"])


async def test_reconciliation_soak_small(tmp_path):
    """A CI-sized soak (bench/soak.py runs a million): the upstream receives exactly
    the allowed messages, byte for byte, in order per connection; each denied query
    gets exactly one ER; the log has exactly one line per message."""
    rng = random.Random(8)
    n_clients, per = 4, 5000
    gens = [TrafficGenerator(100 + i, dhs_share=0.1, malformed_share=0.02) for i in range(n_clients)]
    sent = [list(g.queries(per)) for g in gens]
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        replies: list[list[bytes]] = [[] for _ in range(n_clients)]

        async def client(i: int) -> None:
            async with h.client() as c:
                msgs = sent[i]
                pos = 0
                while pos < len(msgs):
                    k = rng.randint(1, 200)
                    await c.send(*[m.payload for m in msgs[pos : pos + k]])
                    pos += k
                log = await h.wait_log(n_clients * per, timeout=30)
                mine = _records_of(log, msgs)
                denied = sum(1 for r in mine if r["action"] == "deny")
                await c.receive(denied, timeout=20)
                replies[i] = await c.quiet(0.3)  # and nothing more

        async with trio.open_nursery() as n:
            for i in range(n_clients):
                n.start_soon(client, i)
        log = h.log()
        by_conn = {}
        for r in log:
            by_conn.setdefault(r["conn"], []).append(r)
        assert len(log) == n_clients * per
        assert sorted(len(v) for v in by_conn.values()) == [per] * n_clients
        switch_streams = sorted(h.switch.by_conn, key=len)
        expected_streams = []
        for i in range(n_clients):
            recs = _records_of(log, sent[i])
            expected_streams.append([frame(m.payload, "len32") for m, r in zip(sent[i], recs) if r["forwarded"]])
            denied = sum(1 for r in recs if r["action"] == "deny")
            assert len(replies[i]) == denied
            assert all(decode(er).mke == "ER" for er in replies[i])
            assert [decode(er).dst[0] for er in replies[i]] == [r["ori"] for r in recs if r["action"] == "deny"]
        assert sorted(expected_streams, key=len) == switch_streams
        assert sum(1 for r in log if r["action"] == "reject") == sum(m.malformed for s in sent for m in s)


def _records_of(log: list[dict], msgs) -> list[dict]:
    """The log lines of the connection that carried ``msgs`` (matched by sizes)."""
    by_conn: dict[int, list[dict]] = {}
    for r in log:
        by_conn.setdefault(r["conn"], []).append(r)
    sizes = [len(m.payload) for m in msgs]
    return next(v for v in by_conn.values() if [r["bytes"] for r in v] == sizes)


async def test_a_pair_closing_gives_a_stuck_send_its_grace_not_forever(tmp_path):
    """The upstream stops reading, then ends its side: the pair closes, and the send
    stuck toward it gives up after SEND_GRACE instead of holding the connection."""
    from proxy._server import SEND_GRACE

    stuck = trio.Event()

    async def reads_nothing_then_eof(stream: trio.SocketStream) -> None:
        await stuck.wait()
        await stream.send_eof()
        await trio.sleep_forever()

    async with upstream_running(reads_nothing_then_eof) as up_port:
        warnings: list[str] = []
        async with running_proxy(tmp_path, policy_text(), upstream_port=up_port, warnings=warnings) as h:
            async with h.client() as c:
                chunk = b"".join(frame(Q, "len32") for _ in range(2000))
                with trio.move_on_after(3):
                    while True:  # until the proxy's send to the upstream blocks
                        await c.stream.send_all(chunk)
                stuck.set()
                assert await eof_within(c.stream, SEND_GRACE + 5)
            with trio.fail_after(5):
                while h.proxy.open_connections:
                    await trio.sleep(0.05)
            assert any("closed before a send" in w for w in warnings)


@contextlib.asynccontextmanager
async def tcp_pair():
    """Two ends of one loopback TCP connection, as trio SocketStreams."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        near = await trio.open_tcp_stream("127.0.0.1", port)
        far = await listeners[0].accept()
    async with near, far:
        yield near, far


async def test_the_pumps_receive_reads_waits_and_fails_as_trios_does():
    """receive_chunk (the pump's receive: wait first, then read, when the last read did
    not fill the buffer) gives what arrived, b"" at EOF, ClosedResourceError when
    another task closes the stream it waits on, BrokenResourceError on a reset."""
    import socket
    import struct

    from proxy._server import receive_chunk

    for more_waiting in (False, True):
        async with tcp_pair() as (near, far):
            with trio.fail_after(5):
                got = []

                async def receives() -> None:
                    got.append(await receive_chunk(near, 1024, more_waiting))

                async with trio.open_nursery() as n:  # waiting before anything arrives
                    n.start_soon(receives)
                    await trio.sleep(0.05)
                    await far.send_all(b"first")
                assert got == [b"first"]
                await far.send_all(b"x" * 3000)
                await trio.sleep(0.05)
                assert await receive_chunk(near, 1024, more_waiting) == b"x" * 1024  # at most size
                await far.send_eof()
                rest = b""
                while chunk := await receive_chunk(near, 1024, more_waiting):
                    rest += chunk
                assert rest == b"x" * 1976

    async with tcp_pair() as (near, far):
        with trio.fail_after(5):
            async with trio.open_nursery() as n:
                async def closes_it() -> None:
                    await trio.sleep(0.05)
                    await near.aclose()

                n.start_soon(closes_it)
                with pytest.raises(trio.ClosedResourceError):
                    await receive_chunk(near, 1024, False)
            with pytest.raises(trio.ClosedResourceError):  # and once closed, at once
                await receive_chunk(near, 1024, False)

    async with tcp_pair() as (near, far):
        with trio.fail_after(5):
            far.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            await far.aclose()  # an abortive close: the peer sees a reset
            with pytest.raises(trio.BrokenResourceError):
                await receive_chunk(near, 1024, False)
