"""The ER message that answers a denied ``in`` query (SPEC section 5).

It goes from the policy's ``local_ori`` to the requester, in the request's own format
and framing, and carries the request's control field, the deciding rule's id and
``why``, and the decision id; none of the request's data elements are echoed.

A :class:`Denial` is all a reply needs to know of the denied message.  A
:class:`ReplyWriter` holds what is the same for every reply under one policy (the
local ORI, each rule's ``why`` already escaped for each format), so a reply costs a
few string joins; it is the plain statement of a reply, which the plain-Python
engine uses.  The compiled engine writes text and JSON replies itself from the
writer's :class:`ReplyPieces` (a reply there makes no Python object), and asks the
writer for XML ones, whose namespaces come from the request; the tests hold its
replies to the writer's, byte for byte.
"""

from __future__ import annotations

from typing import NamedTuple
from xml.parsers import expat
from xml.sax.saxutils import escape

import msgspec

from ._framing import frame
from ._policy import Policy

_DEFAULT_NS = "http://www.nlets.org"


class _JsonReply(msgspec.Struct):
    mke: str
    ori: str
    dst: list[str]
    ctl: str | None
    body: dict[str, str]


_json = msgspec.json.Encoder()

#: What an attribute value needs escaped beyond ``escape``'s ``& < >``: its quote, and
#: the white space a parser would normalise to a space (a namespace URI is read back
#: exactly, quotes and tabs included).
_ATTR = {'"': "&quot;", "\t": "&#9;", "\n": "&#10;", "\r": "&#13;"}


class Denial(NamedTuple):
    """A denied ``in`` message, as much of it as its ER reply needs: the header fields
    it echoes, the deciding rule, the decision id, and the request itself (read only
    for its XML namespaces or its line ending, never echoed)."""

    fmt: str
    mke: str
    ori: str
    ctl: str | None
    rule: str
    id: str
    request: bytes


class ReplyPieces(NamedTuple):
    """A policy's text and JSON ER payloads cut where the request's own values go, as
    bytes, for the compiled engine, which writes a reply by copying these around the
    denied message's fields (proxy._fastmatch, ``Engine._reply``).

    :meth:`ReplyWriter.payload` is what the pieces must add up to, and the tests hold
    the engine's replies to it byte for byte.  The per-rule tuples are indexed as the
    policy's rules, with ``default`` last.  A text reply is ``text_head``, the
    requester's ORI, ``.*`` and the control field when there is one, ``.TXT``, the
    line end, ``text_denied``, the line end, ``MKE/`` and the request's key,
    ``text_rule``, the decision id, the line end and ``text_why``.  A JSON reply is
    ``json_head``, the ORI as a JSON string, ``],"ctl":`` and the control field (or
    null), ``json_body``, the key, ``json_rule``, the decision id and ``"}}``.
    """

    text_head: bytes
    text_denied: bytes
    text_rule: tuple[bytes, ...]
    text_why: tuple[bytes, ...]
    json_head: bytes
    json_body: bytes
    json_rule: tuple[bytes, ...]


class _Stop(Exception):
    pass


#: Namespace readings kept, by the request's bytes up to its key element, and the
#: longest such start kept (a longer one is parsed each time), so that the cache
#: holds at most 1 MiB of keys whatever a peer sends.
NAMESPACE_CACHE_SIZE = 1024
NAMESPACE_PREFIX_MAX = 1024
_namespace_cache: dict[bytes, tuple[str, str]] = {}
_KEY_ELEMENT = b"MessageKeyCodeText"


def _namespaces(payload: bytes) -> tuple[str, str]:
    """The request's namespace URIs for the root and for the header's children, so
    the reply reads like the request.  Falls back to a generic URI.

    Expat with namespace processing, as ElementTree uses it, stopped at the first
    element whose name ends in MessageKeyCodeText: a reply costs a few elements'
    parse, not the document's.  No DTD is read (the request had none to be decided).

    Requests from one switch start alike (declaration, root, header), so the reading
    is kept (in memory) by the bytes up to the end of the first tag that can hold
    that element's name, when that is within NAMESPACE_PREFIX_MAX bytes.  The parse
    of those bytes alone is the whole parse's first part and stops at the same
    element, so a kept reading is the one the whole parse would give; a prefix whose
    parse does not stop (the name was in a comment, say) is not kept, and the whole
    request is parsed instead.
    """
    at = payload.find(_KEY_ELEMENT, 0, NAMESPACE_PREFIX_MAX)
    end = payload.find(b">", at, NAMESPACE_PREFIX_MAX) if at >= 0 else -1
    if end < 0:
        return _parse_namespaces(payload, True)[0]
    prefix = payload[: end + 1]
    kept = _namespace_cache.get(prefix)
    if kept is not None:
        return kept
    found, stopped = _parse_namespaces(prefix, False)
    if not stopped:
        return _parse_namespaces(payload, True)[0]
    if len(_namespace_cache) >= NAMESPACE_CACHE_SIZE:
        _namespace_cache.clear()
    _namespace_cache[prefix] = found
    return found


def _parse_namespaces(payload: bytes, final: bool) -> tuple[tuple[str, str], bool]:
    """The namespace reading of payload, and whether the parse was stopped (at the
    key element or a DTD) rather than running out of bytes."""
    found: list[str] = []

    def start(name: str, attrs: object) -> None:
        uri, sep, local = name.rpartition("}")
        if not found:
            found.append(uri if sep else _DEFAULT_NS)
        if local.endswith("MessageKeyCodeText"):
            found.append(uri if sep else found[0])
            raise _Stop

    def no_dtd(*args: object) -> None:
        raise _Stop

    parser = expat.ParserCreate(namespace_separator="}")
    parser.StartElementHandler = start
    parser.StartDoctypeDeclHandler = no_dtd
    stopped = False
    try:
        parser.Parse(payload, final)
    except _Stop:
        stopped = True
    except (expat.ExpatError, ValueError, LookupError):
        return (_DEFAULT_NS, _DEFAULT_NS), False
    if not found:
        return (_DEFAULT_NS, _DEFAULT_NS), stopped
    return (found[0], found[-1]), stopped


class ReplyWriter:
    """The ER replies under one policy, framed for the wire."""

    def __init__(self, policy: Policy, framing: str = "len32", terminator: bytes = b"\r\n\x7f") -> None:
        self.policy = policy
        self.framing = framing
        self.terminator = terminator
        why = {rule.id: rule.why for rule in policy.rules}
        why["default"] = f"no rule allows this request and the {policy.state} policy default is deny"
        self._why = why
        self._why_xml = {rule: escape(text) for rule, text in why.items()}
        self._denied = f"REQUEST DENIED BY {policy.state} POLICY"
        self._text_head = f"ER.{policy.local_ori}."
        self._xml_orig = f"<nh2:OriginatingORIID>{policy.local_ori}</nh2:OriginatingORIID>"
        self._xml_denied = f"<n2:NLETSResponseData><n2:ErrorText>{escape(self._denied)}</n2:ErrorText>"

    def payload(self, d: Denial) -> bytes:
        """The unframed ER payload for a denial."""
        why = self._why.get(d.rule, "")
        if d.fmt == "json":
            body = {"error": "denied", "state": self.policy.state, "request_mke": d.mke or "",
                    "rule": d.rule, "why": why, "decision": d.id}  # fmt: skip
            return _json.encode(_JsonReply("ER", self.policy.local_ori, [d.ori or ""], d.ctl, body))
        if d.fmt == "xml":
            root_ns, header_ns = _namespaces(d.request)
            ctl = (f"<nh2:DocumentControlFieldText>{escape(d.ctl)}</nh2:DocumentControlFieldText>"
                   if d.ctl else "")  # fmt: skip
            return (
                '<?xml version="1.0" encoding="UTF-8"?>\n'
                f'<n2:NLETS xmlns:n2="{escape(root_ns, _ATTR)}" xmlns:nh2="{escape(header_ns, _ATTR)}">'
                "<n2:NLETSMessageHeader>"
                "<nh2:MessageKeyCodeText>ER</nh2:MessageKeyCodeText>"
                f"{self._xml_orig}"
                f"<nh2:DestinationORIID>{escape(d.ori or '')}</nh2:DestinationORIID>"
                f"{ctl}"
                "</n2:NLETSMessageHeader>"
                f"{self._xml_denied}"
                f"<n2:RequestMessageKeyCodeText>{escape(d.mke or '')}</n2:RequestMessageKeyCodeText>"
                f"<n2:RuleID>{escape(d.rule)}</n2:RuleID>"
                f"<n2:WhyText>{self._why_xml.get(d.rule, '')}</n2:WhyText>"
                f"<n2:DecisionID>{escape(d.id)}</n2:DecisionID>"
                "</n2:NLETSResponseData>"
                "</n2:NLETS>"
            ).encode("utf-8")
        eol = "\r\n" if b"\r\n" in d.request else "\n"
        ctl = f".*{d.ctl}" if d.ctl else ""
        return (f"{self._text_head}{d.ori or ''}{ctl}.TXT{eol}{self._denied}{eol}"
                f"MKE/{d.mke or ''}.RULE/{d.rule}.DECISION/{d.id}{eol}WHY/{why}").encode("ascii", "replace")  # fmt: skip

    def pieces(self) -> ReplyPieces:
        """The text and JSON payloads of :meth:`payload` as pieces for the compiled
        engine (see :class:`ReplyPieces`)."""
        ids = [rule.id for rule in self.policy.rules] + ["default"]

        def text(s: str) -> bytes:  # the whole reply is encoded so; each piece alike
            return s.encode("ascii", "replace")

        return ReplyPieces(
            text(self._text_head),
            text(self._denied),
            tuple(text(f".RULE/{rule}.DECISION/") for rule in ids),
            tuple(text(f"WHY/{self._why[rule]}") for rule in ids),
            b'{"mke":"ER","ori":' + _json.encode(self.policy.local_ori) + b',"dst":[',
            b',"body":{"error":"denied","state":' + _json.encode(self.policy.state) + b',"request_mke":',
            tuple(b',"rule":' + _json.encode(rule) + b',"why":' + _json.encode(self._why[rule])
                  + b',"decision":"' for rule in ids),
        )  # fmt: skip

    def replies(self, denials: list[Denial]) -> bytes:
        """The framed replies to a batch's denials, in order, as one send."""
        return b"".join([frame(self.payload(d), self.framing, self.terminator) for d in denials])


def deny_payload(denial: Denial, policy: Policy) -> bytes:
    """The unframed ER payload for a denial (a writer made for one reply)."""
    return ReplyWriter(policy).payload(denial)
