"""The compiled decoding fast paths answer exactly as the reference decoders, or not at all.

For each format, ``fast_decode_*`` in ``proxy/_fastmatch.pyx`` reads the common shape
of a payload with byte loops, and returns None for anything else, which the engine
then gives to the reference decoder in ``proxy/_decode.py``.  Wherever a fast path
answers, its Message must equal the reference's: these tests hold it to that on
generated traffic, mutations of it, and random payloads built to find the edges.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._decode import DEFAULT_XML_FIELDS, Malformed, XmlFields, decode_json, decode_text, decode_xml
from proxy._fastmatch import AVX512, fast_decode_json, fast_decode_text, fast_decode_xml, text_masks, xml_body_names
from proxy._traffic import TrafficGenerator


REJECTED = []  # payloads a fast path rejected itself, for the test that they occur


def agrees(fmt: str, payload: bytes, fields: XmlFields = DEFAULT_XML_FIELDS) -> bool | None:
    """True: the fast path answered as the reference (a Message, or Malformed where
    the reference raises Malformed too); None: it declined.  A difference fails."""
    if fmt == "text":
        fast_path, reference = fast_decode_text, decode_text
    elif fmt == "xml":
        fast_path, reference = (lambda p: fast_decode_xml(p, xml_body_names(fields))), lambda p: decode_xml(p, fields)
    else:
        fast_path, reference = fast_decode_json, decode_json
    try:
        fast = fast_path(payload)
    except Malformed:
        with pytest.raises(Malformed):
            reference(payload)
        REJECTED.append((fmt, payload))
        return True
    if fast is None:
        return None
    try:
        ref = reference(payload)
    except Malformed as exc:
        raise AssertionError(f"fast path accepted what the reference rejects ({exc}): {payload!r}") from None
    assert fast == ref, payload
    return True


@pytest.mark.parametrize("fmt", ["text", "xml", "json"])
def test_generated_traffic(fmt):
    answered = declined = 0
    for seed in range(10):
        gen = TrafficGenerator(seed, formats=((fmt, 1),), malformed_share=0.05)
        for q in gen.queries(3000):
            if agrees(fmt, q.payload):
                answered += 1
            else:
                declined += 1
    # 5% are malformed: the fast path must take nearly all the rest
    assert answered / (answered + declined) > 0.9
    # and it rejects on its own the generator's malformed messages of its format
    assert any(f == fmt for f, _ in REJECTED)


# ------------------------------------------------------------------------- text

PIECES = [b".", b"/", b"*", b" ", b"\r", b"\n", b"\r\n", b"TXT", b"PUR/", b"RSN/", b"ATN/", b"IMQ/",
          b"Y", b"yes", b"TRUE", b"1", b"N", b"C", b"CA", b"AZ0070000", b"TXT000000", b"DQ", b"\t",
          b"\x00", b"\x7f", b"\xff", b"A", b"9", b"..", b"*C1", b"OLN/S1"]  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=30), st.integers(0, 2**32))
def test_text_random_structured_payloads(pieces, seed):
    rng = random.Random(seed)
    head = rng.choice([b"DQ.AZ0070000.CA.", b"KQ.AZNLETS20.", b"RQ.AZ0070000.CA.*", b"", b" DQ.AZ0070000."])
    agrees("text", head + b"".join(pieces))


def test_text_random_header_combinations():
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
        if agrees("text", head + sep + rest):
            answered += 1
    assert answered > 1000


def plain_masks(payload: bytes) -> tuple[list[int], ...]:
    """The text fast path's four masks, read a byte at a time: LF; LF or '.'; a '/'
    after a letter of P R A I, one of U S T M and one of R N Q (the slash of what may be
    PUR/, RSN/, ATN/ or IMQ/); neither printable ASCII nor LF."""
    words = [[0] * ((len(payload) + 63) // 64) for _ in range(4)]
    for i, c in enumerate(payload):
        tag = c == 47 and i >= 3 and all(payload[i - 3 + k] in letters
                                         for k, letters in enumerate((b"PRAI", b"USTM", b"RNQ")))
        for k, hit in enumerate((c == 10, c in (10, 46), tag, (c < 0x20 and c != 10) or c >= 0x7F)):
            if hit:
                words[k][i // 64] |= 1 << (i % 64)
    return tuple(words)


MASK_BYTES = st.binary(max_size=300) | st.lists(st.sampled_from(b"./\n\r *AZ09\x00\x1f\x7f\x80\xffPURSNTIMQB"),
                                                 max_size=300).map(bytes)  # fmt: skip


#: Both ways of making the masks: sixteen bytes at a time, and 64 where the CPU can.
MASK_WAYS = [False, pytest.param(True, marks=pytest.mark.skipif(not AVX512, reason="this machine has no AVX-512BW"))]


@pytest.mark.parametrize("wide", MASK_WAYS)
@settings(max_examples=3000, deadline=None)
@given(payload=MASK_BYTES)
def test_text_masks_read_the_bytes_plainly(wide, payload):
    assert text_masks(payload, wide) == plain_masks(payload)


@pytest.mark.parametrize("wide", MASK_WAYS)
def test_text_masks_every_length_and_position(wide):
    """Each special byte at each position of payloads of every length to 200: the word
    and block edges, and the last partial block, where the two ways differ most."""
    for n in range(1, 200):
        for at in {0, n // 2, n - 1} | ({63, 64} & set(range(n))):
            for special in b"\n./\r\x7f\x80":
                payload = bytearray(b"A" * n)
                payload[at] = special
                assert text_masks(bytes(payload), wide) == plain_masks(bytes(payload)), (n, at, special)
        # a tag, or a near miss, across every word and block edge: its letters' classes
        # carry from one word (or block) to the next
        for at in {0, n // 2} | set(range(58, 66)) | set(range(122, 130)):
            for tag in (b"PUR/", b"RSN/", b"ATN/", b"IMQ/", b"RTQ/", b"PUB/", b"BUR/", b"PU/R"):
                if at + 4 <= n:
                    payload = bytearray(b"A" * n)
                    payload[at:at + 4] = tag
                    masks = text_masks(bytes(payload), wide)
                    assert masks == plain_masks(bytes(payload)), (n, at, tag)
                    marked = bool(masks[2][(at + 3) // 64] >> ((at + 3) % 64) & 1)
                    assert marked == (tag in (b"PUR/", b"RSN/", b"ATN/", b"IMQ/", b"RTQ/")), (n, at, tag)
    assert text_masks(b"", wide) == ([], [], [], [])


def test_text_masks_way_in_use_follows_the_environment():
    """STATEGATE_AVX512=0 keeps the portable way; otherwise the wide one where there is one."""
    code = "from proxy._fastmatch import text_masks_in_use; print(text_masks_in_use())"
    ways = {}
    for setting in ("0", "1"):
        env = {**os.environ, "STATEGATE_AVX512": setting}
        ways[setting] = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                       check=True, timeout=60).stdout.strip()  # fmt: skip
    assert ways == {"0": "sse2", "1": "avx512bw" if AVX512 else "sse2"}


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
def test_text_output_form_variants(first, clock1, clock2, txt, body, eol):
    agrees("text", eol.join([first, clock1, clock2, txt, b"".join(body)]))


def test_text_output_form_examples_from_spec():
    spec = b"AM.NLNLEHELP\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374 AZNLETS20\nTXT\nNEW HELP MESSAGE"
    assert agrees("text", spec)
    assert fast_decode_text(spec).dst == ("AZNLETS20",)
    variant = b"DR.CA0000000.\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374\nOR.*Z5.TXT\nIMQ/Y"
    assert agrees("text", variant)
    assert (fast_decode_text(variant).dst, fast_decode_text(variant).ctl) == (("OR",), "Z5")


# -------------------------------------------------------------------------- XML


def test_xml_configured_body_names():
    fields = XmlFields(pur=("Purpose", "PurposeCode"), imq=("Photo",))
    doc = (b'<?xml version="1.0"?><a:NLETS xmlns:a="urn:a"><a:NLETSMessageHeader>'
           b"<a:MessageKeyCodeText>DQ</a:MessageKeyCodeText><a:OriginatingORIID>AZ0070000</a:OriginatingORIID>"
           b"<a:DestinationORIID> CA </a:DestinationORIID></a:NLETSMessageHeader>"
           b"<Body><Purpose>\n C </Purpose><Photo>yes</Photo><PurposeCode>F</PurposeCode></Body></a:NLETS>")  # fmt: skip
    assert agrees("xml", doc, fields)
    msg = fast_decode_xml(doc, xml_body_names(fields))
    assert (msg.pur, msg.imq, msg.dst) == ("C", True, ("CA",))


TAGS = [b"<n2:NLETS>", b"</n2:NLETS>", b"<n2:NLETSMessageHeader>", b"</n2:NLETSMessageHeader>",
        b"<nh2:MessageKeyCodeText>DQ</nh2:MessageKeyCodeText>", b"<MessageKeyCodeText>KQ</MessageKeyCodeText>",
        b"<nh2:OriginatingORIID>AZ0070000</nh2:OriginatingORIID>", b"<OriginatingORIID> NV0130000 </OriginatingORIID>",
        b"<nh2:DestinationORIID>CA</nh2:DestinationORIID>", b"<DestinationORIID/>",
        b"<nh2:DocumentControlFieldText>C1</nh2:DocumentControlFieldText>",
        b"<PurposeCode>C</PurposeCode>", b"<j:ReasonCode> I </j:ReasonCode>", b"<AttentionText>SA DOE</AttentionText>",
        b"<ImageRequestIndicator>true</ImageRequestIndicator>", b"<x a='1' b=\"2\">", b"</x>", b"<x/>",
        b"<x xmlns:j='urn:j'>", b" ", b"\n", b"\t", b"text", b"<!-- c -->", b"&amp;", b"<![CDATA[x]]>",
        b"<y a='1'a='2'/>", b"<y a='1' a='2'/>", b"<j:z/>", b"<z:z/>", b"<xml:z/>", b"]]>", b"<", b">", b"/", b"'", b'"',
        b"<?pi x?>", b"\r\n", b"\xc3\xa9"]  # fmt: skip

PROLOGS = [b"", b'<?xml version="1.0"?>', b'<?xml version="1.0" encoding="UTF-8"?>',
           b'<?xml version="1.1"?>', b" ", b'<?xml version="1.0" encoding="latin-1"?>']  # fmt: skip
ROOT_OPEN = (b'<n2:NLETS xmlns:n2="urn:n2" xmlns:nh2="urn:nh2" xmlns:j="urn:j">'
             b"<n2:NLETSMessageHeader>")  # fmt: skip


@settings(max_examples=4000, deadline=None)
@given(st.sampled_from(PROLOGS), st.lists(st.sampled_from(TAGS), max_size=25), st.booleans())
def test_xml_random_documents(prolog, tags, wrapped):
    body = b"".join(tags)
    doc = prolog + (ROOT_OPEN + body + b"</n2:NLETSMessageHeader></n2:NLETS>" if wrapped else body)
    agrees("xml", doc)


def test_xml_random_well_formed_shapes():
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
        if agrees("xml", doc.encode()):
            answered += 1
    assert answered > 2000


def test_xml_character_data_and_attribute_values_byte_by_byte():
    """Every byte value in character data and in attribute values, where the fast
    path checks them as it reads them: '<' ends character data but never belongs in a
    value, '&', ']]>' and controls are left to the reference, tab and LF pass."""
    head = (b"<NLETSMessageHeader><MessageKeyCodeText>DQ</MessageKeyCodeText>"
            b"<OriginatingORIID>AZ0070000</OriginatingORIID><DestinationORIID>CA</DestinationORIID>"
            b"</NLETSMessageHeader>")  # fmt: skip
    answered = 0
    for c in range(256):
        b = bytes([c])
        for doc in (b'<a x="1' + b + b'2">' + head + b"</a>",
                    b"<a x='1" + b + b"2'>" + head + b"<b y='" + b + b"'/></a>",
                    b"<a>" + head + b"<PurposeCode>C" + b + b"</PurposeCode></a>",
                    b"<a>" + head + b"<j:b xmlns:j='urn:" + b + b"'>x]" + b + b"></j:b></a>",
                    b'<a xmlns="' + b + b'">' + head + b"</a>",
                    b'<a x="1' + b + b" y='2'>" + head + b"</a>",
                    b'<a x="]]' + b + b'">' + head + b"</a>"):
            answered += bool(agrees("xml", doc))
    assert answered > 500


def test_xml_end_tag_names_of_every_length_differing_at_every_byte():
    """An end tag must name its start tag exactly.  The names are compared a word or
    sixteen bytes at a time, overlapping, so a name of each length up to 40 is closed
    by itself (read), and by a name differing at each one byte or one longer or
    shorter (both refused); and a body name the fast path looks up likewise."""
    head = (b"<NLETSMessageHeader><MessageKeyCodeText>DQ</MessageKeyCodeText>"
            b"<OriginatingORIID>AZ0070000</OriginatingORIID><DestinationORIID>CA</DestinationORIID>"
            b"</NLETSMessageHeader>")  # fmt: skip
    read = refused = 0
    for length in range(1, 41):
        name = bytes(b"abcdefghijklmnopqrstuvwxyz0123456789ABCD"[:length])
        closings = [name + b"x", name[:-1]] if length > 1 else [name + b"x"]
        for i in range(length):
            closings.append(name[:i] + (b"Z" if name[i : i + 1] != b"Z" else b"Y") + name[i + 1 :])
        for el in (name, b"j:" + name):
            ns = b' xmlns:j="urn:j"' if el.startswith(b"j:") else b""
            good = b"<r" + ns + b"><" + el + b">v</" + el + b">" + head + b"</r>"
            assert fast_xml_outcome(good) == "read" and agrees("xml", good), good
            read += 1
            for closing in closings:
                close = (b"j:" if el.startswith(b"j:") else b"") + closing
                bad = b"<r" + ns + b"><" + el + b">v</" + close + b">" + head + b"</r>"
                assert fast_xml_outcome(bad) != "read", bad
                agrees("xml", bad)
                refused += 1
    # PurposeCode (11 bytes) and a near miss, as a body name the fast path reads
    for name in (b"PurposeCode", b"PurposeCodf", b"PurposeCod", b"PurposeCodeX"):
        doc = b"<r>" + head + b"<" + name + b">C</" + name + b"></r>"
        assert fast_xml_outcome(doc) == "read" and agrees("xml", doc)
    assert read == 80 and refused > 1600


def fast_xml_outcome(payload: bytes) -> str:
    """What the XML fast path made of a payload: read, declined or rejected."""
    try:
        msg = fast_decode_xml(payload, xml_body_names(DEFAULT_XML_FIELDS))
    except Malformed:
        return "rejected"
    return "declined" if msg is None else "read"


@pytest.mark.parametrize("declaration", [
    b'xmlns:xmlns="urn:x"', b'xmlns:xml="urn:x"', b'xmlns:xml="http://www.w3.org/XML/1998/namespace"',
    b'xmlns="http://www.w3.org/2000/xmlns/"', b'xmlns:j="http://www.w3.org/2000/xmlns/"',
    b'xmlns:j="http://www.w3.org/XML/1998/namespace"', b'xmlns="http://www.w3.org/XML/1998/namespace"',
    b'xmlns:j="urn:a" xmlns:k="urn:a"', b'xmlns:j="urn:a" j:x="1" k:x="2" xmlns:k="urn:a"', b'xmlns=""',
    b'xmlns="urn:a" xmlns="urn:b"', b'xmlns:j="a b"', b'xmlns:j="urn:{"', b'xmlns:j="urn:}"', b'xmlns:xmlx="urn:x"',
])  # fmt: skip
def test_xml_reserved_and_odd_namespace_declarations(declaration):
    """Namespace declarations expat or ElementTree refuse, beside ones they take."""
    doc = (b"<a " + declaration + b"><NLETSMessageHeader><MessageKeyCodeText>DQ</MessageKeyCodeText>"
           b"<OriginatingORIID>AZ0070000</OriginatingORIID><DestinationORIID>CA</DestinationORIID>"
           b"</NLETSMessageHeader></a>")  # fmt: skip
    agrees("xml", doc)


# ------------------------------------------------------------------------- JSON


TEXTS = st.sampled_from(["", " ", "C", " c ", "I", "DQ", "dq", "DQG", "DQGX", "AZ0070000", "1Z0070000",
                         "AZ007000é", "CA", "C\u0660", "X" * 11, "Y" * 101, "SA DOE", "A\tB", "\u00e9", "\x00",
                         "NV0130000", "Ⅻ", "  F  "])  # fmt: skip


@settings(max_examples=5000, deadline=None)
@given(st.fixed_dictionaries({"mke": TEXTS, "ori": TEXTS, "dst": st.lists(TEXTS, max_size=7)},
                             optional={"ctl": st.none() | TEXTS, "pur": st.none() | TEXTS,
                                       "rsn": st.none() | TEXTS, "atn": st.none() | TEXTS,
                                       "imq": st.none() | st.booleans(), "body": st.just({"NAM": "X"})}))  # fmt: skip
def test_json_random_field_values(obj):
    agrees("json", msgspec.json.encode(obj))


def test_json_whitespace_between_every_token():
    """JSON's four whitespace bytes, alone or in a run, between any two tokens are
    read by the fast path; a vertical tab, form feed or no-break space there is not
    JSON whitespace: the fast path does not read the message, and its answer agrees
    with the reference's refusal."""
    doc = b'{"mke":"DQ","ori":"AZ0070000","dst":["CA","NV"],"ctl":"C1","pur":null,"imq":true,"body":{"A":[1,{}]}}'
    cuts = [i for i in range(1, len(doc)) if doc[i - 1 : i] in b'{}[],:' or doc[i : i + 1] in b'{}[],:']
    assert len(cuts) > 30
    for ws in (b" ", b"\t", b"\n", b"\r", b" \r\n\t "):
        for i in cuts:
            spaced = doc[:i] + ws + doc[i:]
            try:
                msg = fast_decode_json(spaced)
            except Malformed:
                msg = "rejected"
            assert msg is not None and msg != "rejected", spaced
            agrees("json", spaced)
    for odd in (b"\x0b", b"\x0c", b"\xa0"):
        for i in cuts:
            spaced = doc[:i] + odd + doc[i:]
            try:
                assert fast_decode_json(spaced) is None, spaced
            except Malformed:
                pass
            agrees("json", spaced)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["mke", "ori", "dst", "ctl", "pur", "rsn", "atn", "imq", "body", "extra"]),
                max_size=12), st.sampled_from([b",", b", ", b" ,", b",\n"]))  # fmt: skip
def test_json_keys_in_any_order_repeated_or_spaced(keys, comma):
    """Members in any order, repeated or missing, with or without space about their
    commas: the fast path reads the key after a value together with its comma when
    it is the one that usually comes next, and must answer as the reference does
    whichever key comes, however often."""
    values = {"mke": b'"DQ"', "ori": b'"AZ0070000"', "dst": b'["CA"]', "ctl": b'"C1"', "pur": b'"C"',
              "rsn": b"null", "atn": b'"SA DOE"', "imq": b"true", "body": b'{"NAM":"X","A":[1,{}]}',
              "extra": b"1"}  # fmt: skip
    doc = b"{" + comma.join(b'"' + k.encode() + b'":' + values[k] for k in keys) + b"}"
    outcome = agrees("json", doc)
    if len(set(keys)) == len(keys) and {"mke", "ori", "dst"} <= set(keys) and "extra" not in keys:
        assert outcome is True, doc  # every such document is one the fast path reads


@settings(max_examples=2000, deadline=None)
@given(st.binary(max_size=200))
def test_json_random_bytes(data):
    agrees("json", b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],' + data)


# ---------------------------------------------------------------- all formats


@settings(max_examples=3000, deadline=None)
@given(st.sampled_from(["text", "xml", "json"]), st.data())
def test_mutations_of_valid_messages(fmt, data):
    """Valid generated messages with pieces of markup inserted, deleted or overwritten."""
    pieces = {"text": PIECES, "xml": TAGS, "json": [b'"', b",", b"}", b"{", b"null", b'"mke":', b"[]", b" ", b'"extra":1,']}[fmt]
    gen = TrafficGenerator(data.draw(st.integers(0, 10_000)), formats=((fmt, 1),), malformed_share=0)
    payload = bytearray(gen.query().payload)
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(payload)))
        op = data.draw(st.sampled_from(["insert", "delete", "replace"]))
        piece = data.draw(st.sampled_from(pieces))
        if op == "insert":
            payload[pos:pos] = piece
        elif op == "delete":
            del payload[pos : pos + data.draw(st.integers(1, 20))]
        else:
            payload[pos : pos + len(piece)] = piece
    agrees(fmt, bytes(payload))
