"""The ER message that answers a denied ``in`` query (SPEC section 5).

It goes from the policy's ``local_ori`` to the requester, in the request's own format
and framing, and carries the request's control field, the deciding rule's id and
``why``, and the decision id; none of the request's data elements are echoed.
"""

from __future__ import annotations

from xml.parsers import expat
from xml.sax.saxutils import escape

import msgspec

from ._framing import frame
from ._policy import Policy
from ._types import LogRecord

_DEFAULT_NS = "http://www.nlets.org"


class _JsonReply(msgspec.Struct):
    mke: str
    ori: str
    dst: list[str]
    ctl: str | None
    body: dict[str, str]


_json = msgspec.json.Encoder()


def _why(policy: Policy, rule_id: str) -> str:
    if rule_id == "default":
        return f"no rule allows this request and the {policy.state} policy default is deny"
    for rule in policy.rules:
        if rule.id == rule_id:
            return rule.why
    return ""


class _Stop(Exception):
    pass


def _namespaces(payload: bytes) -> tuple[str, str]:
    """The request's namespace URIs for the root and for the header's children, so
    the reply reads like the request.  Falls back to a generic URI.

    Expat with namespace processing, as ElementTree uses it, stopped at the first
    element whose name ends in MessageKeyCodeText: a reply costs a few elements'
    parse, not the document's.  No DTD is read (the request had none to be decided).
    """
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
    try:
        parser.Parse(payload, True)
    except _Stop:
        pass
    except (expat.ExpatError, ValueError, LookupError):
        return _DEFAULT_NS, _DEFAULT_NS
    if not found:
        return _DEFAULT_NS, _DEFAULT_NS
    return found[0], found[-1]


def deny_payload(record: LogRecord, request: bytes, policy: Policy) -> bytes:
    """The unframed ER payload for a denied record."""
    requester = record.ori or ""
    why = _why(policy, record.rule)
    if record.fmt == "json":
        body = {
            "error": "denied",
            "state": policy.state,
            "request_mke": record.mke or "",
            "rule": record.rule,
            "why": why,
            "decision": record.id,
        }
        return _json.encode(_JsonReply("ER", policy.local_ori, [requester], record.ctl, body))
    if record.fmt == "xml":
        root_ns, header_ns = _namespaces(request)
        ctl = (
            f"<nh2:DocumentControlFieldText>{escape(record.ctl)}</nh2:DocumentControlFieldText>"
            if record.ctl
            else ""
        )
        text = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f'<n2:NLETS xmlns:n2="{escape(root_ns)}" xmlns:nh2="{escape(header_ns)}">'
            "<n2:NLETSMessageHeader>"
            "<nh2:MessageKeyCodeText>ER</nh2:MessageKeyCodeText>"
            f"<nh2:OriginatingORIID>{policy.local_ori}</nh2:OriginatingORIID>"
            f"<nh2:DestinationORIID>{escape(requester)}</nh2:DestinationORIID>"
            f"{ctl}"
            "</n2:NLETSMessageHeader>"
            "<n2:NLETSResponseData>"
            f"<n2:ErrorText>REQUEST DENIED BY {policy.state} POLICY</n2:ErrorText>"
            f"<n2:RequestMessageKeyCodeText>{escape(record.mke or '')}</n2:RequestMessageKeyCodeText>"
            f"<n2:RuleID>{escape(record.rule)}</n2:RuleID>"
            f"<n2:WhyText>{escape(why)}</n2:WhyText>"
            f"<n2:DecisionID>{escape(record.id)}</n2:DecisionID>"
            "</n2:NLETSResponseData>"
            "</n2:NLETS>"
        )
        return text.encode("utf-8")
    eol = "\r\n" if b"\r\n" in request else "\n"
    header = f"ER.{policy.local_ori}.{requester}"
    if record.ctl:
        header += f".*{record.ctl}"
    lines = [
        header + ".TXT",
        f"REQUEST DENIED BY {policy.state} POLICY",
        f"MKE/{record.mke}.RULE/{record.rule}.DECISION/{record.id}",
        f"WHY/{why}",
    ]
    return eol.join(lines).encode("ascii", "replace")


def deny_reply(
    record: LogRecord, request: bytes, policy: Policy, framing: str, terminator: bytes
) -> bytes:
    """The ER message framed for the wire."""
    return frame(deny_payload(record, request, policy), framing, terminator)
