"""The ER reply's XML namespaces, read with a stopped expat parse, are those of the
whole-tree reading it replaced."""

from __future__ import annotations

import pytest

from proxy._decode import Malformed, decode, parse_xml
from proxy._reply import _DEFAULT_NS, _namespaces, deny_payload
from proxy._traffic import TrafficGenerator
from proxy._types import LogRecord

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
        record = LogRecord("T", "r-1", 1, 1, None, "in", "xml", msg.mke, msg.ori, msg.dst, msg.ctl,
                           None, None, None, False, msg.ori, (), "deny", "default", None, "enforce",
                           False, "rev", len(q.payload))  # fmt: skip
        reply = decode(deny_payload(record, q.payload, policy))
        assert (reply.mke, reply.ori, reply.dst, reply.ctl) == ("ER", "CA0000000", (msg.ori,), msg.ctl)
        assert whole_tree_namespaces(deny_payload(record, q.payload, policy)) == _namespaces(q.payload)
