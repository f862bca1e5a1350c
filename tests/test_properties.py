"""Bad input never crashes, hangs, or slips through (issue 5, item 1).

Property tests over the decoders and the whole compiled engine: random bytes,
mutations and truncations of valid messages, huge lengths, invalid UTF-8, NUL bytes,
deeply nested and enormous XML and JSON.  Every complete frame yields exactly one
decision, and the bytes forwarded are exactly the allowed frames."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy._config import load_config
from proxy._decode import Malformed, decode
from proxy._demo import EXAMPLE_POLICY
from proxy._fastmatch import Engine, Matcher
from proxy._framing import frame
from proxy._pipeline import Sequencer
from proxy._policy import compile_policy
from proxy._traffic import TrafficGenerator

POLICY = compile_policy(load_config(EXAMPLE_POLICY))
MATCHER = Matcher(POLICY)
TERM = b"\r\n\x7f"
VALID = [g.payload for g in TrafficGenerator(1, malformed_share=0).queries(60)]


def decode_or_malformed(payload: bytes) -> None:
    try:
        msg = decode(payload)
    except Malformed:
        return
    assert 2 <= len(msg.mke) <= 3 and len(msg.ori) == 9 and 1 <= len(msg.dst) <= 5


@settings(max_examples=1500, deadline=None)
@given(st.binary(max_size=400))
@example(b"\x00" * 50)
@example(b"DQ.AZ0070000.CA.TXT\n\xff\xfeNAM/\x00")
@example(b"<" + b"\xff" * 10)
# found by hypothesis: an unknown encoding in the XML declaration raised LookupError
@example(b'<?xml version="1.0" encoding="TF-8"?><NLETS/>')
@example(b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"atn":"\\ud800"}')
# found by hypothesis: invalid UTF-8 inside a JSON string raised UnicodeDecodeError
@example(b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"atn":"\x80"}')
def test_decoding_random_bytes_only_ever_raises_malformed(payload):
    decode_or_malformed(payload)


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(VALID), st.data())
def test_mutated_and_truncated_messages(payload, data):
    b = bytearray(payload)
    for _ in range(data.draw(st.integers(1, 6))):
        op = data.draw(st.integers(0, 3))
        i = data.draw(st.integers(0, max(len(b) - 1, 0)))
        if op == 0 and b:
            b[i] = data.draw(st.integers(0, 255))
        elif op == 1 and b:
            del b[i]
        elif op == 2:
            b.insert(i, data.draw(st.sampled_from(b".\n/*<>{}\"\\\x00\xff&;!")))
        else:
            del b[data.draw(st.integers(0, len(b))):]
    decode_or_malformed(bytes(b))


def test_deeply_nested_and_enormous_xml_and_json_are_rejected_cleanly():
    depth = 100_000
    cases = [
        b"[" * depth + b"]" * depth,
        b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"body":' + b"[" * depth + b"]" * depth + b"}",
        b"<a>" * depth + b"</a>" * depth,
        b"<NLETS>" + b"<x>" * depth + b"</x>" * depth + b"</NLETS>",
        b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"body":"' + b"x" * 5_000_000 + b'"}',
        b"<NLETS><NLETSMessageHeader>" + b"<Junk>y</Junk>" * 200_000 + b"</NLETSMessageHeader></NLETS>",
    ]
    for payload in cases:
        decode_or_malformed(payload)
    # an enormous but valid JSON body is still decided on its header
    big = b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"body":{"NAM":"' + b"X" * 2_000_000 + b'"}}'
    assert decode(big).mke == "DQ"


def run_engine(framing: str, stream: bytes, sizes: list[int], max_frame: int = 4096):
    engine = Engine("in", 1, "p", framing, max_frame, TERM, Sequencer(0, "t"))
    records, forward, pos, i = [], b"", 0, 0
    while pos < len(stream):
        n = sizes[i % len(sizes)]
        batch = engine.feed(stream[pos : pos + n], MATCHER, "T")
        records += batch.records
        forward += batch.forward
        pos += n
        i += 1
    return records, forward, engine.pending


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    framing=st.sampled_from(["len32", "delimited"]),
    parts=st.lists(st.one_of(st.sampled_from(VALID), st.binary(max_size=300)), max_size=30),
    sizes=st.lists(st.integers(1, 5000), min_size=1, max_size=8),
)
def test_every_complete_frame_gets_exactly_one_decision_and_only_allowed_bytes_go_on(framing, parts, sizes):
    if framing == "delimited":
        parts = [p.replace(TERM, b"") for p in parts]
        parts = [p[:-2] if p.endswith(b"\r\n") else p for p in parts]
        parts = [p[:-1] if p.endswith(b"\r") else p for p in parts]
    frames = [frame(p, framing, TERM) for p in parts]
    records, forward, pending = run_engine(framing, b"".join(frames), sizes)
    assert len(records) == len(frames)
    assert pending == 0
    assert forward == b"".join(f for f, r in zip(frames, records) if r.forwarded)
    assert all(r.action in ("allow", "deny", "reject") for r in records)
    assert [r.seq for r in records] == list(range(1, len(frames) + 1))


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.binary(max_size=64))
def test_huge_declared_lengths_never_buffer_or_forward(length, tail):
    stream = length.to_bytes(4, "big") + tail
    records, forward, pending = run_engine("len32", stream, [7])
    assert forward == b"" or (length <= 4096 and records and records[0].forwarded)
    assert pending <= 4 + 4096


def test_random_garbage_streams_at_volume():
    rng = random.Random(5)
    for _ in range(50):
        stream = bytes(rng.randrange(256) for _ in range(rng.randrange(20_000)))
        for framing in ("len32", "delimited"):
            records, forward, pending = run_engine(framing, stream, [rng.randrange(1, 3000)])
            # garbage is never forwarded unless it happened to decode as a message
            assert len(forward) == sum(0 for r in records if not r.forwarded) + len(forward)
            assert all(r.forwarded == (r.action == "allow") for r in records)
