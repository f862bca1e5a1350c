"""The compiled JSON field checks answer exactly as the reference, or not at all."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._decode import Malformed, decode_json
from proxy._fastmatch import fast_decode_json
from proxy._traffic import TrafficGenerator


def agrees(payload: bytes) -> bool | None:
    fast = fast_decode_json(payload)
    if fast is None:
        return None
    try:
        ref = decode_json(payload)
    except Malformed as exc:
        raise AssertionError(f"fast path accepted what the reference rejects ({exc}): {payload!r}") from None
    assert fast == ref, payload
    return True


def test_generated_json_traffic():
    answered = 0
    gen = TrafficGenerator(3, formats=(("json", 1),), malformed_share=0.05)
    for q in gen.queries(20_000):
        answered += bool(agrees(q.payload))
    assert answered > 18_000


TEXTS = st.sampled_from(["", " ", "C", " c ", "I", "DQ", "dq", "DQG", "DQGX", "AZ0070000", "1Z0070000",
                         "AZ007000é", "CA", "C\u0660", "X" * 11, "Y" * 101, "SA DOE", "A\tB", "\u00e9", "\x00",
                         "NV0130000", "Ⅻ", "  F  "])  # fmt: skip


@settings(max_examples=5000, deadline=None)
@given(st.fixed_dictionaries({"mke": TEXTS, "ori": TEXTS, "dst": st.lists(TEXTS, max_size=7)},
                             optional={"ctl": st.none() | TEXTS, "pur": st.none() | TEXTS,
                                       "rsn": st.none() | TEXTS, "atn": st.none() | TEXTS,
                                       "imq": st.none() | st.booleans(), "body": st.just({"NAM": "X"})}))  # fmt: skip
def test_random_field_values(obj):
    agrees(msgspec.json.encode(obj))


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes(data):
    agrees(b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],' + data)
