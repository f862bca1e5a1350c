"""The compiled text fast path answers exactly as the reference decoder, or not at all.

``fast_decode_text`` handles plain ASCII text in either header form; otherwise it returns None
and the engine asks the reference (``proxy._decode.decode_text``).  Wherever it does
answer, its Message must equal the reference's.
"""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._decode import Malformed, decode_text
from proxy._fastmatch import fast_decode_text
from proxy._traffic import TrafficGenerator


def agrees(payload: bytes) -> bool | None:
    """True: both answer the same; None: the fast path declined; raises on a difference."""
    fast = fast_decode_text(payload)
    if fast is None:
        return None
    try:
        ref = decode_text(payload)
    except Malformed as exc:
        raise AssertionError(f"fast path accepted what the reference rejects ({exc}): {payload!r}") from None
    assert fast == ref, payload
    return True


def test_generated_text_traffic():
    answered = declined = 0
    for seed in range(20):
        gen = TrafficGenerator(seed, formats=(("text", 1),), malformed_share=0.05)
        for q in gen.queries(5000):
            if agrees(q.payload):
                answered += 1
            else:
                declined += 1
    assert answered / (answered + declined) > 0.9


PIECES = [b".", b"/", b"*", b" ", b"\r", b"\n", b"\r\n", b"TXT", b"PUR/", b"RSN/", b"ATN/", b"IMQ/",
          b"Y", b"yes", b"TRUE", b"1", b"N", b"C", b"CA", b"AZ0070000", b"TXT000000", b"DQ", b"\t",
          b"\x00", b"\x7f", b"\xff", b"A", b"9", b"..", b"*C1", b"OLN/S1"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.integers(0, 2**32))
def test_random_structured_payloads(pieces, seed):
    rng = random.Random(seed)
    head = rng.choice([b"DQ.AZ0070000.CA.", b"KQ.AZNLETS20.", b"RQ.AZ0070000.CA.*", b"", b" DQ.AZ0070000."])
    agrees(head + b"".join(pieces))


@settings(max_examples=3000, deadline=None)
@given(st.data())
def test_mutations_of_valid_messages(data):
    gen = TrafficGenerator(data.draw(st.integers(0, 10_000)), formats=(("text", 1),), malformed_share=0)
    payload = bytearray(gen.query().payload)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.sampled_from(PIECES))
        if op == "insert":
            payload[pos:pos] = piece
        elif op == "delete":
            del payload[pos : pos + len(piece)]
        else:
            payload[pos : pos + len(piece)] = piece
    agrees(bytes(payload))


def test_random_header_combinations():
    """Dense random headers from a small alphabet: where the differences would hide."""
    rng = random.Random(11)
    alphabet = [b"DQ", b"AZ0070000", b"CA", b"TXT", b"*C1", b"*", b"", b"TXTAB", b"TX", b"NV0130000"]
    body = [b"PUR/C", b"PUR/ ", b"RSN/I", b"ATN/X Y", b"IMQ/ y ", b"IMQ/TRUE", b"PURX/C", b"NAM/A",
            b"PUR/12345678901", b"", b" "]  # fmt: skip
    answered = 0
    for _ in range(200_000):
        head = b".".join(rng.choice(alphabet) for _ in range(rng.randint(1, 8)))
        sep = rng.choice([b"", b".", b"\n", b"\r\n"])
        rest = rng.choice([b".", b"\n", b" . "]).join(rng.choice(body) for _ in range(rng.randint(0, 5)))
        if agrees(head + sep + rest):
            answered += 1
    assert answered > 1000


CLOCK_LINES = [b"10:01 08/22/2011 35048", b"10:01 08/22/2011 08374 AZNLETS20", b"10:01 08/22/2011 08374 AZNLETS20*Z5",
               b"10:01 08/22/2011 08374 AZNLETS20.*Z5", b"10:01 08/22/2011 08374 AZ.", b"10:01 08/22/2011 08374 X*",
               b"10:01 08/22/2011  08374   CA*12345678901", b"1001 08/22/2011", b"10:01x 1 2 CA", b"10:01", b"",
               b"10:01 a b AZNLETS20*", b"10:01_ 1 2 CA", b" 10:01 1 2 3 NV0130000 "]  # fmt: skip
TXT_LINES = [b"TXT", b"OR.*Z5.TXT", b"CA.TXT", b"*C1.TXT", b"CA.NV0130000.TXT", b"TXTPUR/C", b"CA.TXT.PUR/F",
             b"*.TXT", b"CA.*C1.*C2.TXT", b"CA", b"TXT000000.TXT", b"A.B.C.D.E.F.TXT", b"CA.NV.AZ.OR.WA.TXT"]  # fmt: skip
FIRST_LINES = [b"AM.NLNLEHELP", b"AM.NLNLEHELP.", b"DR.CA0000000", b"DR.CA0000000..", b"D.CA0000000", b"DR"]
EOL = [b"\n", b"\r\n", b" \n", b"\n\n"]


@settings(max_examples=5000, deadline=None)
@given(st.sampled_from(FIRST_LINES), st.sampled_from(CLOCK_LINES), st.sampled_from(CLOCK_LINES),
       st.sampled_from(TXT_LINES), st.lists(st.sampled_from(PIECES), max_size=12), st.sampled_from(EOL))  # fmt: skip
def test_output_form_variants(first, clock1, clock2, txt, body, eol):
    agrees(eol.join([first, clock1, clock2, txt, b"".join(body)]))


def test_output_form_examples_from_spec():
    spec = b"AM.NLNLEHELP\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374 AZNLETS20\nTXT\nNEW HELP MESSAGE"
    assert agrees(spec)
    assert fast_decode_text(spec).dst == ("AZNLETS20",)
    variant = b"DR.CA0000000.\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374\nOR.*Z5.TXT\nIMQ/Y"
    assert agrees(variant)
    assert (fast_decode_text(variant).dst, fast_decode_text(variant).ctl) == (("OR",), "Z5")
