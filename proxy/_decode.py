"""Sans-I/O payload decoding (SPEC section 4): bytes in, a :class:`Message` out.

A payload is legacy Nlets text, Nlets XML or JSON, told apart by its first non-blank
byte.  Whatever the format, only the header fields and the four decision elements
(``PUR``, ``RSN``, ``ATN``, ``IMQ``) are read; every other data element is personal
data and is never returned.  A payload whose header cannot be read raises
:class:`Malformed`, whose message never quotes the payload.
"""

from __future__ import annotations

import re
from typing import Any
from xml.etree.ElementTree import Element

import msgspec
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from ._types import Message

#: Limits on the header fields we log, so a hostile message cannot bloat the log.
MAX_CTL = 10
MAX_CODE = 10
MAX_ATN = 100
MAX_DST = 5

BLANK = b" \t\r\n\x00\x7f"

_MKE = re.compile(r"[A-Z]{2,3}")
_ORI = re.compile(r"[A-Z]{2}[A-Z0-9]{7}")
_DST = re.compile(r"[A-Z0-9]{2}|[A-Z0-9]{9}")
_CLOCK = re.compile(r"\d\d:\d\d\b")
_ELEMENT = re.compile(r"([A-Z0-9]{2,4})/(.*)", re.S)
_TRUE = frozenset({"Y", "YES", "TRUE", "1"})


class Malformed(ValueError):
    """The payload's header cannot be read.  The text names the defect, not the data."""


class XmlFields(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """Local names of the XML body elements read for each decision field."""

    pur: tuple[str, ...] = ("PurposeCode",)
    rsn: tuple[str, ...] = ("ReasonCode",)
    atn: tuple[str, ...] = ("AttentionText",)
    imq: tuple[str, ...] = ("ImageRequestIndicator",)


DEFAULT_XML_FIELDS = XmlFields()


def detect_format(payload: bytes) -> str | None:
    """``text``, ``xml`` or ``json`` from the first non-blank byte; None if all blank."""
    stripped = payload.lstrip(BLANK)
    if not stripped:
        return None
    first = stripped[:1]
    if first == b"<":
        return "xml"
    if first == b"{":
        return "json"
    return "text"


def decode(payload: bytes, xml_fields: XmlFields = DEFAULT_XML_FIELDS) -> Message:
    fmt = detect_format(payload)
    if fmt is None:
        raise Malformed("empty message")
    if fmt == "text":
        return decode_text(payload)
    if fmt == "xml":
        return decode_xml(payload, xml_fields)
    return decode_json(payload)


# --------------------------------------------------------------------------- checks


def _check_mke(mke: str) -> str:
    if not _MKE.fullmatch(mke):
        raise Malformed("message key is not 2-3 letters")
    return mke


def _check_ori(ori: str) -> str:
    if not _ORI.fullmatch(ori):
        raise Malformed("originating ORI is not 9 characters A-Z 0-9 starting with 2 letters")
    return ori


def _check_dst(dst: list[str]) -> tuple[str, ...]:
    if not dst:
        raise Malformed("no destination")
    if len(dst) > MAX_DST:
        raise Malformed(f"more than {MAX_DST} destinations")
    for d in dst:
        if not _DST.fullmatch(d):
            raise Malformed("destination is not a 2-character code or a 9-character ORI")
    return tuple(dst)


def _check_ctl(ctl: str | None) -> str | None:
    if ctl is None or ctl == "":
        return None
    if len(ctl) > MAX_CTL or not ctl.isprintable():
        raise Malformed(f"control field longer than {MAX_CTL} characters or not printable")
    return ctl


def _check_code(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_CODE or not value.isprintable():
        raise Malformed(f"{name} code longer than {MAX_CODE} characters or not printable")
    return value


def _check_atn(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    if len(value) > MAX_ATN or not value.isprintable():
        raise Malformed(f"ATN longer than {MAX_ATN} characters or not printable")
    return value


def _is_yes(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _TRUE


# ---------------------------------------------------------------------- legacy text


def _lines(payload: bytes) -> list[str]:
    # Nlets text is ASCII; anything else in a header makes it malformed, and in the
    # body it only matters inside the four elements we read.
    text = payload.decode("ascii", "replace").lstrip(" \t\r\n\x00\x7f")
    return [line.strip(" \t\r\x00\x7f") for line in text.split("\n")]


def _body_elements(body: str) -> dict[str, str]:
    """The first value of PUR, RSN, ATN and IMQ among the body's data elements."""
    found: dict[str, str] = {}
    for line in body.split("\n"):
        for part in line.split("."):
            m = _ELEMENT.match(part.strip(" \t\r\x00\x7f"))
            if m is not None:
                prefix = m.group(1)
                if prefix in ("PUR", "RSN", "ATN", "IMQ") and prefix not in found:
                    found[prefix] = m.group(2)
    return found


def _is_txt_marker(segment: str) -> bool:
    """``TXT`` (possibly with the body's first element glued on), but not an ORI like
    ``TXT000000`` that merely starts with the letters."""
    return segment.startswith("TXT") and not _DST.fullmatch(segment)


def _split_destinations(segments: list[str]) -> tuple[list[str], str | None, str | None]:
    """Destinations, control field and the rest after ``TXT`` from header segments.

    Returns the rest as None when no TXT marker was found.
    """
    dst: list[str] = []
    ctl: str | None = None
    for i, seg in enumerate(segments):
        if _is_txt_marker(seg):
            rest = ".".join([seg[3:]] + segments[i + 1 :])
            return dst, ctl, rest
        if seg.startswith("*"):
            if ctl is not None:
                raise Malformed("two control fields")
            ctl = seg[1:]
            continue
        if ctl is not None:
            raise Malformed("destination after the control field")
        dst.append(seg)
    return dst, ctl, None


def decode_text(payload: bytes) -> Message:
    lines = _lines(payload)
    first = lines[0]
    head = first.split(".")
    if len(head) >= 3 and not (len(head) == 3 and head[2] == ""):
        # Input form: MKE.ORI.DST[.DST...][.*CTL].TXT on one line.
        mke, ori = _check_mke(head[0]), _check_ori(head[1])
        dst, ctl, rest = _split_destinations(head[2:])
        if rest is None:
            raise Malformed("no TXT in the header line")
        body = rest + "\n" + "\n".join(lines[1:])
    else:
        # Output form: MKE.ORI, two clock lines, then TXT.
        if len(head) < 2:
            raise Malformed("header line is not MKE.ORI")
        mke, ori = _check_mke(head[0]), _check_ori(head[1])
        if len(lines) < 4 or not _CLOCK.match(lines[1]) or not _CLOCK.match(lines[2]):
            raise Malformed("output header lacks its two clock lines")
        dst, ctl = [], None
        tokens = lines[2].split()
        if len(tokens) >= 4:
            last = tokens[-1]
            name, star, tail = last.partition("*")
            name = name.rstrip(".")
            if _DST.fullmatch(name):
                dst.append(name)
                ctl = tail if star else None
        txt_segments = lines[3].split(".")
        more_dst, more_ctl, rest = _split_destinations(txt_segments)
        if rest is None:
            raise Malformed("no TXT line after the clock lines")
        if more_dst or more_ctl is not None:
            if dst and more_dst:
                raise Malformed("destination both on the clock line and the TXT line")
            dst = dst or more_dst
            ctl = more_ctl if more_ctl is not None else ctl
        body = rest + "\n" + "\n".join(lines[4:])
    found = _body_elements(body)
    return Message(
        fmt="text",
        mke=mke,
        ori=ori,
        dst=_check_dst(dst),
        ctl=_check_ctl(ctl),
        pur=_check_code("PUR", found.get("PUR")),
        rsn=_check_code("RSN", found.get("RSN")),
        atn=_check_atn(found.get("ATN")),
        imq=_is_yes(found.get("IMQ")),
    )


# ------------------------------------------------------------------------------ XML


def _local(tag: Any) -> str:
    if not isinstance(tag, str):  # comments and processing instructions
        return ""
    return tag.rpartition("}")[2].rpartition(":")[2]


def _first_text(root: Element, names: tuple[str, ...]) -> str | None:
    wanted = set(names)
    for el in root.iter():
        if _local(el.tag) in wanted:
            return (el.text or "").strip()
    return None


def parse_xml(payload: bytes) -> Element:
    """Parse with entity expansion and external entities forbidden."""
    try:
        return fromstring(payload, forbid_dtd=True)
    except (ParseError, DefusedXmlException, ValueError, RecursionError, LookupError) as exc:
        # LookupError: an encoding the declaration names that Python does not know
        raise Malformed(f"XML does not parse ({type(exc).__name__})") from None


def decode_xml(payload: bytes, fields: XmlFields = DEFAULT_XML_FIELDS) -> Message:
    root = parse_xml(payload)
    header = None
    for el in root.iter():
        if _local(el.tag) == "NLETSMessageHeader":
            header = el
            break
    if header is None:
        raise Malformed("no NLETSMessageHeader")
    mke = ori = ctl = None
    dst: list[str] = []
    for el in header.iter():
        name = _local(el.tag)
        text = (el.text or "").strip()
        if name == "MessageKeyCodeText" and mke is None:
            mke = text
        elif name == "OriginatingORIID" and ori is None:
            ori = text
        elif name == "DestinationORIID":
            dst.append(text)
        elif name == "DocumentControlFieldText" and ctl is None:
            ctl = text
    if mke is None or ori is None:
        raise Malformed("XML header lacks MessageKeyCodeText or OriginatingORIID")
    return Message(
        fmt="xml",
        mke=_check_mke(mke),
        ori=_check_ori(ori),
        dst=_check_dst(dst),
        ctl=_check_ctl(ctl),
        pur=_check_code("PUR", _first_text(root, fields.pur)),
        rsn=_check_code("RSN", _first_text(root, fields.rsn)),
        atn=_check_atn(_first_text(root, fields.atn)),
        imq=_is_yes(_first_text(root, fields.imq)),
    )


# ----------------------------------------------------------------------------- JSON


class JsonMessage(msgspec.Struct, forbid_unknown_fields=True):
    """The JSON wire form (SPEC section 4); unknown top-level keys are an error."""

    mke: str
    ori: str
    dst: list[str]
    ctl: str | None = None
    pur: str | None = None
    rsn: str | None = None
    atn: str | None = None
    imq: bool | None = None
    # The body is personal data: skipped, never built into Python objects.
    body: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


_json_decoder = msgspec.json.Decoder(JsonMessage)


def decode_json(payload: bytes) -> Message:
    try:
        m = _json_decoder.decode(payload)
    except msgspec.ValidationError as exc:
        # msgspec's text names the field, never a value.
        raise Malformed(f"JSON: {exc}") from None
    except (msgspec.DecodeError, UnicodeDecodeError):
        raise Malformed("JSON does not parse") from None
    except RecursionError:
        raise Malformed("JSON nested too deeply") from None
    return Message(
        fmt="json",
        mke=_check_mke(m.mke),
        ori=_check_ori(m.ori),
        dst=_check_dst(m.dst),
        ctl=_check_ctl(m.ctl),
        pur=_check_code("PUR", m.pur),
        rsn=_check_code("RSN", m.rsn),
        atn=_check_atn(m.atn),
        imq=bool(m.imq),
    )
