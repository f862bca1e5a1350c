"""Micro-benchmarks (pytest-benchmark): each step of the decision path on 1,000
synthetic messages per call, the compiled path beside the plain-Python twin.

    .venv/bin/pytest bench/test_micro.py --benchmark-group-by=group --benchmark-columns=median,ops

Times are per call of 1,000 messages: divide by 1,000 for the time per message.
Compiled decoding is the engine's: the compiled fast path, and the plain-Python
reference decoder for what it declines.
"""

from __future__ import annotations

import json

import msgspec
import pytest

from proxy._config import load_config
from proxy._decode import decode
from proxy._demo import EXAMPLE_POLICY
from proxy._fastmatch import (Engine, Matcher, compiled_framer_events, fast_decode_json,
                              fast_decode_text, fast_decode_xml)  # fmt: skip
from proxy._framing import Len32Framer, frame
from proxy._pipeline import ReferenceEngine, Sequencer
from proxy._policy import compile_policy, decide
from proxy._reply import Denial, ReplyWriter, _namespaces, _parse_namespaces
from proxy._traffic import TrafficGenerator

N = 1000
TS = "2026-11-23T00:00:00.000000Z"
POLICY = compile_policy(load_config(EXAMPLE_POLICY))
MATCHER = Matcher(POLICY)


def payloads(fmt: str | None = None, output_form: bool = False) -> list[bytes]:
    formats = ((fmt, 1),) if fmt else (("text", 80), ("xml", 10), ("json", 10))
    gen = TrafficGenerator(5, formats=formats, malformed_share=0.0 if fmt else 0.01)
    out = []
    while len(out) < N:
        q = gen.query()
        # the generator writes 10% of text in the output form; pick the form asked for
        if fmt == "text" and q.payload[2:4] != b"." and (b"\n" in q.payload.split(b"TXT")[0]) != output_form:
            continue
        out.append(q.payload)
    return out


MIXED = payloads()
STREAM = b"".join(frame(p, "len32") for p in MIXED)
def _decodes(p: bytes) -> bool:
    try:
        decode(p)
    except Exception:
        return False
    return True


MESSAGES = [decode(p) for p in MIXED if _decodes(p)]


@pytest.mark.parametrize("path", ["compiled", "plain"])
def test_framing(benchmark, path):
    benchmark.group = "framing (len32), 1000 messages"
    chunks = [STREAM[i : i + 65536] for i in range(0, len(STREAM), 65536)]
    if path == "compiled":
        result = benchmark(compiled_framer_events, False, 1 << 20, b"", chunks)[0]
    else:
        def plain():
            f = Len32Framer(1 << 20)
            return [ev for c in chunks for ev in f.feed(c)]

        result = benchmark(plain)
    assert len(result) == N


def compiled_decode(payload: bytes):
    """The engine's decoding: the compiled fast path, the reference where it declines."""
    c = payload[:1]
    fast = fast_decode_xml(payload, MATCHER.xml_names) if c == b"<" else (
        fast_decode_json(payload) if c == b"{" else fast_decode_text(payload))  # fmt: skip
    return fast if fast is not None else decode(payload)


@pytest.mark.parametrize("path", ["compiled", "plain"])
@pytest.mark.parametrize("form", ["text", "text-output", "xml", "json"])
def test_decoding(benchmark, form, path):
    benchmark.group = f"decoding {form}, 1000 messages"
    batch = payloads(form.split("-")[0], output_form=form == "text-output")
    fn = compiled_decode if path == "compiled" else decode

    def run():
        return [fn(p) for p in batch]

    assert benchmark(run) == [decode(p) for p in batch]


@pytest.mark.parametrize("path", ["compiled", "plain"])
def test_decision(benchmark, path):
    benchmark.group = "decision, ~1000 decoded messages"
    if path == "compiled":
        def run():
            return [MATCHER.decide(m, "in") for m in MESSAGES]
    else:
        def run():
            return [decide(POLICY, m, "in") for m in MESSAGES]
    actions = [v[0] if path == "compiled" else v.action for v in benchmark(run)]
    assert actions == [decide(POLICY, m, "in").action for m in MESSAGES]


@pytest.mark.parametrize("encoder", ["msgspec", "json-stdlib"])
def test_log_line_encoding(benchmark, encoder):
    benchmark.group = "log-line encoding, 1000 records"
    records = Engine("in", 1, "127.0.0.1:1", "len32", 1 << 20, b"", Sequencer()).feed(STREAM, MATCHER, TS).records
    if encoder == "msgspec":
        enc = msgspec.json.Encoder()

        def run():
            return b"".join(enc.encode(r) + b"\n" for r in records)
    else:
        dicts = [msgspec.structs.asdict(r) for r in records]

        def run():
            return "".join(json.dumps(d, separators=(",", ":")) + "\n" for d in dicts).encode()

    assert benchmark(run).count(b"\n") == N


@pytest.mark.parametrize("path", ["compiled", "compiled+log", "compiled+log, one engine", "plain"])
def test_engine(benchmark, path):
    """Framing + decoding + decision of one chunk of 1000 messages; ``compiled+log``
    also writes each decision's log line, as the proxy does (plain does too), with a
    new engine each call; ``one engine`` keeps one across calls, as a connection
    does, so its line buffer is grown once (a new engine's growing buffer takes fresh
    memory each call, which on this machine's VM costs about as much as the lines)."""
    benchmark.group = "engine (framing+decoding+decision), 1000 mixed messages"
    if path == "compiled":
        def run():
            return Engine("in", 1, None, "len32", 1 << 20, b"", Sequencer()).decide(STREAM, MATCHER)
    elif path == "compiled+log":
        def run():
            return Engine("in", 1, None, "len32", 1 << 20, b"", Sequencer()).feed(STREAM, MATCHER, TS).count
    elif path == "compiled+log, one engine":
        engine = Engine("in", 1, None, "len32", 1 << 20, b"", Sequencer())

        def run():
            return engine.feed(STREAM, MATCHER, TS).count
    else:
        def run():
            return ReferenceEngine("in", 1, None, "len32", 1 << 20, b"", Sequencer()).feed(STREAM, POLICY, TS).count
    assert benchmark(run) == N


@pytest.mark.parametrize("stamp", ["by the engine", "utc_timestamp()"])
def test_one_message_chunks(benchmark, stamp):
    """1,000 chunks of one message each through one engine, as the proxy feeds them at a
    modest rate (a chunk a message): ``by the engine`` as the proxy runs, the chunk
    stamped with the clock in C (``Engine.feed`` with no ``ts``), against the time
    made in Python (``proxy._pipeline.utc_timestamp``) and given.  Here each chunk's
    fixed cost shows, which a chunk of 1,000 messages spreads thin."""
    from proxy._pipeline import utc_timestamp

    benchmark.group = "engine with log lines, 1000 chunks of one mixed message"
    chunks = [frame(p, "len32") for p in MIXED]
    engine = Engine("in", 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer())
    if stamp == "by the engine":
        def run():
            return sum(engine.feed(c, MATCHER).count for c in chunks)
    else:
        def run():
            return sum(engine.feed(c, MATCHER, utc_timestamp()).count for c in chunks)
    assert benchmark(run) == N


@pytest.mark.parametrize("fmt", ["text", "xml", "json"])
def test_engine_by_format(benchmark, fmt):
    """The compiled decision path (Engine.decide) on 1,000 messages of one format."""
    benchmark.group = "engine (framing+decoding+decision) by format, 1000 messages"
    stream = b"".join(frame(p, "len32") for p in payloads(fmt))
    matcher = Matcher(POLICY)

    def run():
        return Engine("in", 1, None, "len32", 1 << 20, b"", Sequencer()).decide(stream, matcher)

    assert benchmark(run) == N


def _denied(fmt: str) -> tuple[bytes, list]:
    """1,000 queries of one format the example policy denies, as one len32 stream, and
    their Denials as the plain-Python engine makes them."""
    gen = TrafficGenerator(11, formats=((fmt, 1),), dhs_share=1.0, malformed_share=0.0)
    stream, denials = [], []
    while len(denials) < N:
        payload = gen.query().payload
        msg = decode(payload, POLICY.xml)
        v = decide(POLICY, msg, "in")
        if v.action == "deny":
            stream.append(frame(payload, "len32"))
            denials.append(Denial(msg.fmt, msg.mke, msg.ori, msg.ctl, v.rule, f"r-{len(denials) + 1:x}",
                                  payload))  # fmt: skip
    return b"".join(stream), denials


@pytest.mark.parametrize("fmt", ["text", "xml", "json"])
@pytest.mark.parametrize("path", ["writer", "engine-replies", "engine-no-replies"])
def test_deny_replies(benchmark, fmt, path):
    """ER replies to 1,000 denied queries of one format (framed, one send's bytes):
    the plain-Python ReplyWriter alone, and the compiled engine deciding and logging
    the queries with its replies and without (deny_reply off): the engine's replies
    cost the difference of those two."""
    benchmark.group = f"ER replies, 1000 denied queries ({fmt})"
    stream, denials = _denied(fmt)
    if path == "writer":
        replies = benchmark(ReplyWriter(POLICY).replies, denials)
    else:
        matcher = Matcher(POLICY if path == "engine-replies" else msgspec.structs.replace(POLICY, deny_reply=False))

        def run():
            return Engine("in", 1, None, "len32", 1 << 20, b"", Sequencer(0, "r")).feed(stream, matcher, TS)

        batch = benchmark(run)
        assert batch.count == N
        replies = batch.replies
        if path == "engine-no-replies":
            assert replies == b""
            return
    assert replies == ReplyWriter(POLICY).replies(denials)  # the same bytes, ids "r-1" ...


def _xml_requests() -> list[bytes]:
    return [d.request for d in _denied("xml")[1]]


@pytest.mark.parametrize("path", ["kept", "parsed"])
def test_xml_reply_namespaces(benchmark, path):
    """The XML reply's namespace reading: kept by the request's start, or parsed each
    time (expat stopped at the key element, what every reply did before)."""
    benchmark.group = "ER reply namespaces, 1000 XML requests"
    requests = _xml_requests()
    if path == "kept":
        def run():
            return [_namespaces(r) for r in requests]
    else:
        def run():
            return [_parse_namespaces(r, True)[0] for r in requests]
    assert len(set(benchmark(run))) == 1
