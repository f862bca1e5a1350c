"""Framing: any chunking of a stream gives the same events, oversize frames are
skipped without buffering, and the compiled framer agrees with the plain one."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._fastmatch import compiled_framer_events
from proxy._framing import DelimitedFramer, Len32Framer, frame

TERM = b"\r\n\x7f"


def chunked(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        n = max(1, sizes[i % len(sizes)]) if sizes else len(data)
        out.append(data[pos : pos + n])
        pos += n
        i += 1
    return out


def run_python(framing: str, max_frame: int, chunks: list[bytes]):
    f = Len32Framer(max_frame) if framing == "len32" else DelimitedFramer(TERM, max_frame)
    events = []
    for c in chunks:
        events.extend(f.feed(c))
    return events, f.pending, f.busy


def run_compiled(framing: str, max_frame: int, chunks: list[bytes]):
    return compiled_framer_events(framing == "delimited", max_frame, TERM, chunks)


@pytest.mark.parametrize("run", [run_python, run_compiled], ids=["python", "compiled"])
@pytest.mark.parametrize("framing", ["len32", "delimited"])
def test_split_and_joined_chunks_give_the_same_frames(run, framing):
    payloads = [b"DQ.AZ0000000.CA.TXT\nOLN/S1", b"x" * 300, b"AM.NLNLEHELP\n1\n2\nTXT\nHI"]
    stream = b"".join(frame(p, framing, TERM) for p in payloads)
    joined, _, _ = run(framing, 1024, [stream])
    assert [e[1] for e in joined] == payloads
    assert [e[2] for e in joined] == [frame(p, framing, TERM) for p in payloads]
    for size in (1, 2, 3, 5, 7, 64):
        split, pending, busy = run(framing, 1024, chunked(stream, [size]))
        assert split == joined
        assert (pending, busy) == (0, False)


@pytest.mark.parametrize("run", [run_python, run_compiled], ids=["python", "compiled"])
def test_len32_oversize_is_skipped_and_the_next_frame_works(run):
    big = b"B" * 5000
    stream = frame(big, "len32") + frame(b"next", "len32")
    for size in (1, 100, 10_000):
        events, pending, busy = run("len32", 1000, chunked(stream, [size]))
        assert events == [("oversize", 5000), ("frame", b"next", frame(b"next", "len32"))]
        assert (pending, busy) == (0, False)


def test_len32_oversize_is_not_buffered():
    f = Len32Framer(1000)
    assert f.feed((10**9).to_bytes(4, "big")) == [("oversize", 10**9)]
    for _ in range(100):
        f.feed(b"x" * 10_000)
    # Nothing of the discarded payload is held; it is reported, so not pending, but
    # the connection is still inside it.
    assert (len(f._buf), f.pending, f.busy) == (0, 0, True)
    events, pending, busy = run_compiled("len32", 1000, [(10**9).to_bytes(4, "big"), b"x" * 10_000])
    assert (events, pending, busy) == ([("oversize", 10**9)], 0, True)


@pytest.mark.parametrize("run", [run_python, run_compiled], ids=["python", "compiled"])
def test_delimited_oversize_is_skipped_and_the_next_frame_works(run):
    stream = b"B" * 5000 + TERM + b"next" + TERM
    for size in (1, 2, 100, 10_000):
        events, pending, busy = run("delimited", 1000, chunked(stream, [size]))
        assert events == [("oversize", 5000), ("frame", b"next", b"next" + TERM)]
        assert (pending, busy) == (0, False)


def test_delimited_discards_while_waiting_for_the_terminator():
    f = DelimitedFramer(TERM, 1000)
    for _ in range(100):
        assert f.feed(b"x" * 10_000) == []
    assert len(f._buf) < len(TERM)
    assert f.feed(TERM) == [("oversize", 1_000_000)]


def test_exactly_max_frame_is_a_frame():
    assert run_python("len32", 10, [frame(b"0123456789", "len32")])[0][0][0] == "frame"
    assert run_python("delimited", 10, [b"0123456789" + TERM])[0][0][0] == "frame"
    assert run_python("len32", 10, [frame(b"0123456789A", "len32")])[0][0] == ("oversize", 11)


@settings(max_examples=300, deadline=None)
@given(
    framing=st.sampled_from(["len32", "delimited"]),
    payloads=st.lists(st.binary(max_size=60), max_size=20),
    max_frame=st.integers(1, 50),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=10),
)
def test_compiled_framer_matches_python_on_random_streams(framing, payloads, max_frame, sizes):
    if framing == "delimited":
        payloads = [p.replace(b"\x7f", b"") for p in payloads]
    stream = b"".join(frame(p, framing, TERM) for p in payloads)
    chunks = chunked(stream, sizes)
    assert run_compiled(framing, max_frame, chunks) == run_python(framing, max_frame, chunks)


def test_compiled_framer_matches_python_on_garbage():
    rng = random.Random(7)
    for _ in range(300):
        data = bytes(rng.choice(b"\x00\x01\r\n\x7fAB") for _ in range(rng.randrange(200)))
        chunks = chunked(data, [rng.randrange(1, 30) for _ in range(5)])
        for framing in ("len32", "delimited"):
            assert run_compiled(framing, 40, chunks) == run_python(framing, 40, chunks)
