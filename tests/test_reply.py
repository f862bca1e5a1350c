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
