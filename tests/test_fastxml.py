"""The compiled XML fast path answers exactly as the reference (defusedxml), or not at all."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._decode import DEFAULT_XML_FIELDS, Malformed, XmlFields, decode_xml
from proxy._fastmatch import fast_decode_xml
from proxy._traffic import TrafficGenerator


def names(fields: XmlFields) -> tuple:
    return tuple(tuple(n.encode() for n in getattr(fields, f)) for f in ("pur", "rsn", "atn", "imq"))


DEFAULT_NAMES = names(DEFAULT_XML_FIELDS)


def agrees(payload: bytes, fields: XmlFields = DEFAULT_XML_FIELDS) -> bool | None:
    fast = fast_decode_xml(payload, names(fields))
    if fast is None:
        return None
    try:
        ref = decode_xml(payload, fields)
    except Malformed as exc:
        raise AssertionError(f"fast path accepted what the reference rejects ({exc}): {payload!r}") from None
    assert fast == ref, payload
    return True


def test_generated_xml_traffic():
    answered = declined = 0
    for seed in range(10):
        gen = TrafficGenerator(seed, formats=(("xml", 1),), malformed_share=0.05)
        for q in gen.queries(3000):
            if agrees(q.payload):
                answered += 1
            else:
                declined += 1
    assert answered / (answered + declined) > 0.9


def test_configured_body_names():
    fields = XmlFields(pur=("Purpose", "PurposeCode"), imq=("Photo",))
    doc = (b'<?xml version="1.0"?><a:NLETS xmlns:a="urn:a"><a:NLETSMessageHeader>'
           b"<a:MessageKeyCodeText>DQ</a:MessageKeyCodeText><a:OriginatingORIID>AZ0070000</a:OriginatingORIID>"
           b"<a:DestinationORIID> CA </a:DestinationORIID></a:NLETSMessageHeader>"
           b"<Body><Purpose>\n C </Purpose><Photo>yes</Photo><PurposeCode>F</PurposeCode></Body></a:NLETS>")  # fmt: skip
    assert agrees(doc, fields)
    msg = fast_decode_xml(doc, names(fields))
    assert (msg.pur, msg.imq, msg.dst) == ("C", True, ("CA",))


TAGS = [b"<n2:NLETS>", b"</n2:NLETS>", b"<n2:NLETSMessageHeader>", b"</n2:NLETSMessageHeader>",
        b"<nh2:MessageKeyCodeText>DQ</nh2:MessageKeyCodeText>", b"<MessageKeyCodeText>KQ</MessageKeyCodeText>",
        b"<nh2:OriginatingORIID>AZ0070000</nh2:OriginatingORIID>", b"<OriginatingORIID> NV0130000 </OriginatingORIID>",
        b"<nh2:DestinationORIID>CA</nh2:DestinationORIID>", b"<DestinationORIID/>",
        b"<nh2:DocumentControlFieldText>C1</nh2:DocumentControlFieldText>",
        b"<PurposeCode>C</PurposeCode>", b"<j:ReasonCode> I </j:ReasonCode>", b"<AttentionText>SA DOE</AttentionText>",
        b"<ImageRequestIndicator>true</ImageRequestIndicator>", b"<x a='1' b=\"2\">", b"</x>", b"<x/>",
        b"<x xmlns:j='urn:j'>", b" ", b"\n", b"\t", b"text", b"<!-- c -->", b"&amp;", b"<![CDATA[x]]>",
        b"<y a='1'a='2'/>", b"<y a='1' a='2'/>", b"<j:z/>", b"<z:z/>", b"]]>", b"<", b">", b"/", b"'", b'"',
        b"<?pi x?>", b"\r\n", b"\xc3\xa9"]  # fmt: skip

PROLOGS = [b"", b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-8"?>',
           b'<?xml version="1.1"?>', b" ", b'<?xml version="1.0" encoding="latin-1"?>']  # fmt: skip
ROOT_OPEN = (b'<n2:NLETS xmlns:n2="urn:n2" xmlns:nh2="urn:nh2" xmlns:j="urn:j">'
             b"<n2:NLETSMessageHeader>")  # fmt: skip


@settings(max_examples=4000, deadline=None)
@given(st.sampled_from(PROLOGS), st.lists(st.sampled_from(TAGS), max_size=25), st.booleans())
def test_random_documents(prolog, tags, wrapped):
    body = b"".join(tags)
    doc = prolog + (ROOT_OPEN + body + b"</n2:NLETSMessageHeader></n2:NLETS>" if wrapped else body)
    agrees(doc)


@settings(max_examples=4000, deadline=None)
@given(st.data())
def test_mutations_of_valid_messages(data):
    gen = TrafficGenerator(data.draw(st.integers(0, 10_000)), formats=(("xml", 1),), malformed_share=0)
    payload = bytearray(gen.query().payload)
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(payload)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.sampled_from(TAGS))
        if op == "insert":
            payload[pos:pos] = piece
        elif op == "delete":
            del payload[pos : pos + data.draw(st.integers(1, 20))]
        else:
            payload[pos : pos + len(piece)] = piece
    agrees(bytes(payload))


def test_many_random_well_formed_shapes():
    """Random but well-formed documents, so the fast path answers often."""
    rng = random.Random(5)
    answered = 0
    fields = [("MessageKeyCodeText", ["DQ", "KQ", "D1", "dq", "ABCD", ""]),
              ("OriginatingORIID", ["AZ0070000", "1Z0070000", "AZ007", ""]),
              ("DestinationORIID", ["CA", "NV0130000", "C", " CA ", "CA\nX"]),
              ("DocumentControlFieldText", ["C1", "", "  ", "12345678901", "A\tB"]),
              ("PurposeCode", ["C", "", "\n", "TOOLONGCODE1"]), ("ReasonCode", ["I", "N "]),
              ("AttentionText", ["SA DOE", "X" * 101]), ("ImageRequestIndicator", ["Y", "no", "1", "TRUE", "t"])]  # fmt: skip
    for _ in range(20_000):
        parts = []
        chosen = fields[:3] + rng.sample(fields[3:], rng.randint(0, len(fields) - 3))
        for name, values in chosen:
            for _ in range(rng.choice([1, 1, 1, 1, 2, 6])):
                prefix = rng.choice(["", "nh2:", "j:"])
                v = values[0] if rng.random() < 0.9 else rng.choice(values)
                parts.append(f"<{prefix}{name}>{v}</{prefix}{name}>" if v or rng.random() < 0.5
                             else f"<{prefix}{name}/>")  # fmt: skip
        split = rng.randint(0, len(parts)) if rng.random() < 0.1 else rng.randint(len(parts) // 2, len(parts))
        doc = (f'<n2:NLETS xmlns:n2="urn:n2" xmlns:nh2="urn:nh2" xmlns:j="urn:j">'
               f"<n2:NLETSMessageHeader>{''.join(parts[:split])}</n2:NLETSMessageHeader>"
               f"<n2:Body>{''.join(parts[split:])}</n2:Body></n2:NLETS>")  # fmt: skip
        if agrees(doc.encode()):
            answered += 1
    assert answered > 2000
