"""End to end over real loopback sockets: a client on the Nlets side, the proxy, and a
recording switch upstream (SPEC sections 2-6)."""

from __future__ import annotations

import pytest
import trio

from proxy._decode import decode
from proxy._framing import frame
from proxy._traffic import render

from .conftest import policy_text, running_proxy

# Synthetic subject data; none of it may appear in a log line or an ER.
PERSON = {"NAM": "SAMPLE,ALEX", "DOB": "19700101", "OLN": "S1234567"}
PERSONAL_VALUES = ("SAMPLE", "19700101", "S1234567")


def query(fmt: str, mke: str, ori: str, *, ctl: str | None = "K7", pur: str | None = None,
          atn: str | None = "SA DOE", imq: bool = False, output_form: bool = False) -> bytes:  # fmt: skip
    return render(fmt, mke, ori, ["CA"], ctl, pur, None, atn, imq, PERSON, output_form=output_form)


FORMS = [("text", False), ("text", True), ("xml", False), ("json", False)]
FORM_IDS = ["text-input", "text-output", "xml", "json"]


@pytest.mark.parametrize("framing", ["len32", "delimited"])
@pytest.mark.parametrize(("fmt", "output_form"), FORMS, ids=FORM_IDS)
async def test_allowed_arrives_byte_for_byte_and_denied_gets_one_er(tmp_path, framing, fmt, output_form):
    allowed = query(fmt, "DQ", "AZ0070000", output_form=output_form)
    denied = query(fmt, "DQ", "VTICE0900", ctl="Q42", output_form=output_form)
    async with running_proxy(tmp_path, policy_text(), framing=framing, answer=False) as h:
        async with h.client() as c:
            await c.send(allowed, denied)
            replies = await c.receive(1)
            await c.quiet(0.2)
            log = await h.wait_log(2)
        # Only the allowed message reached the switch, exactly as sent.
        assert h.switch.received == [frame(allowed, framing, h.terminator)]
        assert bytes(h.switch.raw_bytes) == frame(allowed, framing, h.terminator)
        # The requester got exactly one ER, in the request's format.
        assert len(replies) == 1
        er = replies[0]
        er_msg = decode(er)
        assert (er_msg.fmt, er_msg.mke, er_msg.ori, er_msg.dst, er_msg.ctl) == (
            fmt, "ER", "CA0000000", ("VTICE0900",), "Q42")
        decision = next(r for r in log if r["action"] == "deny")
        assert decision["rule"] == "no-dmv-for-dhs"
        text = er.decode()
        assert "no-dmv-for-dhs" in text and decision["id"] in text
        assert "State law bars sharing DMV data" in text
        for value in PERSONAL_VALUES:
            assert value not in text
        # The log has both decisions and no personal data.
        assert [(r["action"], r["forwarded"], r["fmt"]) for r in log] == [
            ("allow", True, fmt), ("deny", False, fmt)]
        raw_log = h.log_path.read_text()
        for value in PERSONAL_VALUES:
            assert value not in raw_log


async def test_log_line_is_written_before_the_message_is_forwarded(tmp_path):
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        seen_in_log_at_arrival = []
        original = h.switch._respond

        def respond(payload: bytes):
            # Called as the switch reads each frame: its decision must already be logged.
            seen_in_log_at_arrival.append(len(h.log()))
            return original(payload)

        h.switch._respond = respond
        async with h.client() as c:
            for i in range(20):
                await c.send(query("text", "RQ", f"AZ{i:07d}"))
            await h.wait_log(20)
        with trio.move_on_after(2):
            while len(seen_in_log_at_arrival) < 20:
                await trio.sleep(0.01)
        assert len(seen_in_log_at_arrival) == 20
        assert all(n >= i + 1 for i, n in enumerate(seen_in_log_at_arrival))


async def test_responses_flow_back_and_out_rules_apply(tmp_path):
    async with running_proxy(tmp_path, policy_text()) as h:
        async with h.client() as c:
            # IQ from DHS with a purpose: allowed in; the IR response is not DMV data.
            await c.send(query("text", "IQ", "TXICE0300", pur="C"))
            # DQ from an ordinary agency: allowed in, DR response allowed out.
            await c.send(query("json", "DQ", "AZ0070000"))
            replies = await c.receive(2)
        assert sorted(decode(r).mke for r in replies) == ["DR", "IR"]
        log = await h.wait_log(4)
        outs = [r for r in log if r["dir"] == "out"]
        assert {(r["mke"], r["agency"], r["action"]) for r in outs} == {
            ("IR", "TXICE0300", "allow"), ("DR", "AZ0070000", "allow")}

    # An out rule denying responses to this agency: the response is dropped.
    extra = ('[[rules]]\nid = "no-responses-to-az"\naction = "deny"\ndirection = "out"\n'
             'agency = ["AZ0070000"]\nwhy = "test"\n')  # fmt: skip
    text = policy_text().replace("[[rules]]", extra + "[[rules]]", 1)
    async with running_proxy(tmp_path / "b", text) as h:
        async with h.client() as c:
            await c.send(query("xml", "DQ", "AZ0070000"))
            replies = await c.quiet(0.5)
        assert replies == []
        assert len(h.switch.received) == 1 and h.switch.responses_sent == 1
        log = await h.wait_log(2)
        out = [r for r in log if r["dir"] == "out"]
        assert [(r["action"], r["rule"], r["forwarded"], r["agency"]) for r in out] == [
            ("deny", "no-responses-to-az", False, "AZ0070000")]


async def test_monitor_mode_forwards_and_logs_the_would_be_decision(tmp_path):
    denied = query("text", "DQ", "VTICE0900")
    async with running_proxy(tmp_path, policy_text(mode="monitor"), answer=False) as h:
        async with h.client() as c:
            await c.send(denied)
            replies = await c.quiet(0.3)
        assert replies == []  # no ER in monitor mode
        assert h.switch.received == [frame(denied, "len32")]
        [rec] = await h.wait_log(1)
        assert (rec["action"], rec["rule"], rec["mode"], rec["forwarded"]) == (
            "deny", "no-dmv-for-dhs", "monitor", True)


async def test_shadow_rule_is_logged_and_does_not_decide(tmp_path):
    no_atn = query("text", "RQ", "AZ0070000", atn=None)
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        async with h.client() as c:
            await c.send(no_atn)
            await h.wait_log(1)
        [rec] = h.log()
        assert (rec["action"], rec["rule"], rec["shadow"], rec["forwarded"]) == (
            "allow", "default", "watch-dmv", True)
        assert rec["atn"] is None


@pytest.mark.parametrize("framing", ["len32", "delimited"])
async def test_malformed_and_oversize_are_rejected_and_the_next_frame_works(tmp_path, framing):
    good = query("text", "KQ", "AZ0070000")
    malformed = b"DQ.SAMPLE.CA.TXT\nNAM/SAMPLE,ALEX"
    async with running_proxy(tmp_path, policy_text(), framing=framing, answer=False,
                             proxy_extra="max_frame = 4096") as h:  # fmt: skip
        async with h.client() as c:
            big = b"DQ.AZ0070000.CA.TXT\nNAM/" + b"X" * 10_000
            await c.send(malformed, good)
            await c.send(big)
            await c.send(good)
            replies = await c.quiet(0.3)
            log = await h.wait_log(4)
        assert replies == []  # rejects get no reply
        assert h.switch.received == [frame(good, framing, h.terminator)] * 2
        assert [(r["action"], r["rule"], r["forwarded"]) for r in log] == [
            ("reject", "malformed", False), ("allow", "default", True),
            ("reject", "oversize", False), ("allow", "default", True)]
        assert log[2]["bytes"] == len(big)
        raw = h.log_path.read_text()
        assert "SAMPLE" not in raw


async def test_log_fields_and_numbering(tmp_path):
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        async with h.client() as c1, h.client() as c2:
            await c1.send(query("json", "RQ", "AZ0070000", ctl="C1", imq=True))
            await h.wait_log(1)
            await c2.send(query("json", "RQ", "NV0130000"))
            log = await h.wait_log(2)
    assert [r["seq"] for r in log] == [1, 2]
    assert log[0]["conn"] != log[1]["conn"]
    assert log[0]["id"] != log[1]["id"]
    rec = log[0]
    assert list(rec) == ["ts", "id", "seq", "conn", "peer", "dir", "fmt", "mke", "ori", "dst",
                         "ctl", "pur", "rsn", "atn", "imq", "agency", "groups", "action", "rule",
                         "shadow", "mode", "forwarded", "rev", "bytes"]  # fmt: skip
    assert rec["peer"].startswith("127.0.0.1:")
    assert rec["ts"].endswith("Z") and len(rec["ts"]) == len("2026-11-22T15:04:05.123456Z")
    assert (rec["ctl"], rec["imq"], rec["dst"], rec["agency"]) == ("C1", True, ["CA"], "AZ0070000")
    assert len(rec["rev"]) == 64


async def test_upstream_unreachable_closes_the_client(tmp_path):
    from proxy._config import parse_config
    from proxy._fastmatch import Matcher
    from proxy._log import DecisionLog
    from proxy._policy import compile_policy
    from proxy._server import Proxy

    # A port nothing listens on: bind one, note it, close it.
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    dead = sock.getsockname()[1]
    sock.close()
    config = parse_config(f'[proxy]\nlisten = "127.0.0.1:0"\nupstream = "127.0.0.1:{dead}"\n'
                          + policy_text())  # fmt: skip
    warnings = []
    with DecisionLog(tmp_path / "d.jsonl") as log:
        proxy = Proxy(config, Matcher(compile_policy(config)), log, warn=warnings.append)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.run)
            stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
            with trio.fail_after(5):
                assert await stream.receive_some(10) == b""
            proxy.stop()
    assert proxy.upstream_errors == 1
    assert any("unreachable" in w for w in warnings)


async def test_many_messages_in_one_chunk_and_across_connections(tmp_path):
    from proxy._traffic import TrafficGenerator

    gen = TrafficGenerator(5, dhs_share=0.2, malformed_share=0.05)
    msgs = list(gen.queries(600))
    async with running_proxy(tmp_path, policy_text(), answer=False) as h:
        async with h.client() as c:
            await c.send(*[m.payload for m in msgs])
            log = await h.wait_log(len(msgs))
            await c.quiet(0.2)
        assert len(log) == len(msgs)
        forwarded = [m.payload for m, r in zip(msgs, log) if r["forwarded"]]
        assert h.switch.received == [frame(p, "len32") for p in forwarded]
        denied_in = sum(1 for r in log if r["action"] == "deny")
        assert len(c.frames) == denied_in
        assert sum(1 for r in log if r["action"] == "reject") == sum(m.malformed for m in msgs)
        assert [r["seq"] for r in log] == list(range(1, len(msgs) + 1))
        for m, r in zip(msgs, log):
            if not m.malformed:
                assert (r["mke"], r["ori"]) == (m.mke, m.ori)
