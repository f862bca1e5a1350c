"""The ER reply's XML namespaces, read with a stopped expat parse, are those of the
whole-tree reading it replaced."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy._decode import Malformed, decode, parse_xml
from proxy._reply import (_DEFAULT_NS, NAMESPACE_CACHE_SIZE, Denial, _namespace_cache, _namespaces,
                          _parse_namespaces, deny_payload)  # fmt: skip
from proxy._traffic import TrafficGenerator

from .conftest import make_policy


def whole_tree_namespaces(payload: bytes) -> tuple[str, str]:
    """The earlier statement: parse the whole document, then look."""
    try:
        root = parse_xml(payload)
    except Malformed:
        return _DEFAULT_NS, _DEFAULT_NS
    root_ns = root.tag[1:].partition("}")[0] if root.tag.startswith("{") else _DEFAULT_NS
    header_ns = root_ns
    for el in root.iter():
        if isinstance(el.tag, str) and el.tag.endswith("MessageKeyCodeText"):
            if el.tag.startswith("{"):
                header_ns = el.tag[1:].partition("}")[0]
            break
    return root_ns, header_ns


HEADER = ("<{h}MessageKeyCodeText>DQ</{h}MessageKeyCodeText><{h}OriginatingORIID>VTICE0900"
          "</{h}OriginatingORIID><{h}DestinationORIID>CA</{h}DestinationORIID>")


@pytest.mark.parametrize(
    "doc",
    [
        '<n2:NLETS xmlns:n2="urn:a" xmlns:nh2="urn:b"><n2:NLETSMessageHeader>' + HEADER.format(h="nh2:")
        + "</n2:NLETSMessageHeader></n2:NLETS>",
        '<NLETS xmlns="urn:default"><NLETSMessageHeader>' + HEADER.format(h="")
        + "</NLETSMessageHeader></NLETS>",
        "<NLETS><NLETSMessageHeader>" + HEADER.format(h="") + "</NLETSMessageHeader></NLETS>",
        '<NLETS><NLETSMessageHeader xmlns:x="urn:x">' + HEADER.format(h="x:")
        + "</NLETSMessageHeader></NLETS>",
        '<a:NLETS xmlns:a="urn:a"><Other><a:RequestMessageKeyCodeText xmlns:a="urn:c">DQ'
        "</a:RequestMessageKeyCodeText></Other><a:NLETSMessageHeader>" + HEADER.format(h="a:")
        + "</a:NLETSMessageHeader></a:NLETS>",
        '<?xml version="1.0" encoding="UTF-8"?>\n<!-- c --><NLETS xmlns="urn:d"><NLETSMessageHeader>'
        + HEADER.format(h="") + "</NLETSMessageHeader></NLETS>",
        '<!DOCTYPE NLETS><NLETS xmlns="urn:d"/>',
        "<NLETS><unclosed>",
    ],
)
def test_namespaces_as_the_whole_tree_gives_them(doc):
    assert _namespaces(doc.encode()) == whole_tree_namespaces(doc.encode())


def test_generated_requests_and_their_replies():
    policy = make_policy('[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n')
    gen = TrafficGenerator(3, formats=(("xml", 1),), malformed_share=0)
    for q in gen.queries(300):
        assert _namespaces(q.payload) == whole_tree_namespaces(q.payload)
        msg = decode(q.payload)
        denial = Denial("xml", msg.mke, msg.ori, msg.ctl, "default", "r-1", q.payload)
        reply = decode(deny_payload(denial, policy))
        assert (reply.mke, reply.ori, reply.dst, reply.ctl) == ("ER", "CA0000000", (msg.ori,), msg.ctl)
        assert whole_tree_namespaces(deny_payload(denial, policy)) == _namespaces(q.payload)


# Pieces of documents that put the key element's name where a prefix could mislead a
# cache: in a comment or a processing instruction before the element, on an element
# that is not the key, in text, behind a DTD, or cut off inside the tag.
_PIECES = [
    '<?xml version="1.0"?>',
    "<!-- MessageKeyCodeText -->",
    "<?pi MessageKeyCodeText?>",
    "<!DOCTYPE NLETS>",
    '<n2:NLETS xmlns:n2="urn:a" xmlns:nh2="urn:b">',
    '<NLETS xmlns="urn:d">',
    "<NLETS>",
    '<n2:NLETSMessageHeader xmlns:nh2="urn:c">',
    "<NLETSMessageHeader>",
    "<nh2:MessageKeyCodeText>DQ</nh2:MessageKeyCodeText>",
    '<MessageKeyCodeText a=">">DQ</MessageKeyCodeText>',
    "<x:MessageKeyCodeText>DQ</x:MessageKeyCodeText>",
    "<RequestMessageKeyCodeText>DQ</RequestMessageKeyCodeText>",
    "MessageKeyCodeText",
    "<![CDATA[<MessageKeyCodeText>]]>",
    "</NLETSMessageHeader>",
    "</n2:NLETS>",
]


@given(st.lists(st.sampled_from(_PIECES), min_size=1, max_size=7), st.integers(0, 400))
@settings(max_examples=400, deadline=None)
def test_kept_namespace_readings_are_the_whole_parse(pieces, cut):
    """However a document starts, the reading kept for its prefix is the stopped
    parse of the whole document, at first sight and when read again from the cache."""
    doc = "".join(pieces).encode()
    for payload in (doc, doc[:cut]):
        whole = _parse_namespaces(payload, True)[0]
        assert _namespaces(payload) == whole
        assert _namespaces(payload) == whole  # read again: from the cache where kept


def test_namespace_cache_is_bounded_and_used():
    _namespace_cache.clear()
    docs = [(f'<a:NLETS xmlns:a="urn:{i}"><a:NLETSMessageHeader><a:MessageKeyCodeText>DQ'
             "</a:MessageKeyCodeText></a:NLETSMessageHeader></a:NLETS>").encode()
            for i in range(NAMESPACE_CACHE_SIZE + 10)]  # fmt: skip
    for i, doc in enumerate(docs):
        assert _namespaces(doc) == (f"urn:{i}", f"urn:{i}")
        assert len(_namespace_cache) <= NAMESPACE_CACHE_SIZE
    # a request that starts as a kept one is answered from the cache, whatever follows
    _namespace_cache.clear()
    head = docs[0][: docs[0].index(b">", docs[0].index(b"MessageKeyCodeText")) + 1]
    assert _namespaces(docs[0]) == ("urn:0", "urn:0")
    assert list(_namespace_cache) == [head]
    # a start longer than NAMESPACE_PREFIX_MAX is read, never kept: a peer cannot fill
    # memory with long distinct starts
    long = docs[1].replace(b"<a:NLETSMessageHeader>", b'<a:NLETSMessageHeader x="' + b"y" * 2000 + b'">')
    assert _namespaces(long) == ("urn:1", "urn:1")
    assert list(_namespace_cache) == [head]


ODD_POLICY = r'''
[policy]
state = "CA"
local_ori = "CA0000000"
default = "deny"

[[rules]]
id = "let-some_in"
action = "allow"
agency = ["AZ*"]
why = "allowed"

[[rules]]
id = "no-dq"
action = "deny"
mke = ["DQ"]
why = "say \"no\" \\ twice,\ttab \u0001 caf\u00e9 \u2713 \u2028 WHY/x.RULE/y"
'''


def _framed(replies: bytes, framing: str, term: bytes) -> list[bytes]:
    from proxy._framing import make_framer

    return [e[1] for e in make_framer(framing, 1 << 20, term).feed(replies)]


@pytest.mark.parametrize("framing", ["len32", "delimited"])
def test_compiled_replies_are_the_writers_byte_for_byte(framing):
    """The compiled engine writes text and JSON replies itself from ReplyPieces, and
    frames the writer's XML ones: over denials of every format and header form, with
    and without a control field, LF and CRLF line ends, a ``why`` that needs escaping
    (JSON) or replacing (text), and a run id that does too, its replies are the
    plain-Python engine's (ReplyWriter) byte for byte, chunked anyhow."""
    import random

    from proxy._config import parse_config
    from proxy._fastmatch import Engine, Matcher
    from proxy._framing import frame
    from proxy._pipeline import ReferenceEngine, Sequencer
    from proxy._policy import compile_policy

    rng = random.Random(5)
    term = b"\r\n\x7f"
    policy = compile_policy(parse_config(ODD_POLICY))
    gen = TrafficGenerator(3, dhs_share=0.3, malformed_share=0.02)
    payloads = []
    for g in gen.queries(3000):
        p = g.payload
        r = rng.random()
        if p.startswith((b"{", b"<")):
            pass
        elif r < 0.3:
            p = p.replace(b"\n", b"\r\n")  # CRLF line ends
        elif r < 0.4:
            p = p.replace(b"\n", b"\r\n", 1)
        if framing == "delimited":
            p = p.replace(term, b"")
        payloads.append(p)
    stream = b"".join(frame(p, framing, term) for p in payloads)
    run_id = 'r"\\\u00e9'
    fast = Engine("in", 1, None, framing, 1 << 20, term, Sequencer(0, run_id))
    ref = ReferenceEngine("in", 1, None, framing, 1 << 20, term, Sequencer(0, run_id))
    matcher = Matcher(policy)
    got = want = b""
    pos = 0
    while pos < len(stream):
        chunk = stream[pos : pos + rng.choice([1, 50, 999, 40_000])]
        pos += len(chunk)
        a, b = fast.feed(chunk, matcher, "T"), ref.feed(chunk, policy, "T")
        assert a.replies == b.replies
        got += a.replies
        want += b.replies
    replies = _framed(got, framing, term)
    kinds = {k: sum(r.startswith(k) for r in replies) for k in (b"ER.", b"<?xml", b'{"mke":"ER"')}
    assert all(n >= 30 for n in kinds.values()), kinds
    text = [r for r in replies if r.startswith(b"ER.")]
    assert any(b"\r\n" in r for r in text) and any(b"\r\n" not in r for r in text)
    assert any(b".*" in r.split(b"\n")[0] for r in text) and any(b".*" not in r.split(b"\n")[0] for r in text)
    assert any(b'"ctl":null' in r for r in replies) and any(b'"ctl":"C' in r for r in replies)
    assert any(b"caf? " in r for r in text) and any(b"caf\xc3\xa9 " in r for r in replies)


@pytest.mark.parametrize("uri", ['urn:a&quot;b', "urn:a&amp;b&lt;c&gt;", "urn:a&#9;b&#10;c&#13;d", "urn:'q'"])
def test_xml_reply_carries_any_namespace_uri_and_parses(uri):
    """A namespace URI with a quote, markup characters or white space a parser would
    normalise comes back in the reply exactly, and the reply is well-formed."""
    policy = make_policy('[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n')
    request = (f'<n2:NLETS xmlns:n2="{uri}" xmlns:nh2="{uri}:h"><n2:NLETSMessageHeader>'
               + HEADER.format(h="nh2:") + "</n2:NLETSMessageHeader></n2:NLETS>").encode()
    reply = deny_payload(Denial("xml", "DQ", "VTICE0900", None, "default", "r-1", request), policy)
    assert decode(reply, policy.xml).mke == "ER"
    assert _namespaces(reply) == _namespaces(request) == whole_tree_namespaces(request)
