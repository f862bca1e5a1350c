"""Decoding all three formats and both legacy header forms (SPEC section 4)."""

from __future__ import annotations

import msgspec
import pytest

from proxy._decode import Malformed, XmlFields, decode, detect_format
from proxy._types import Message

# Synthetic subject data used across these tests; it must never come out of decode.
PERSONAL = ("SAMPLE,ALEX", "19700101", "S1234567", "ZZ12345")


def assert_no_personal_data(msg: Message) -> None:
    text = msgspec.json.encode(msg).decode()
    for value in PERSONAL:
        assert value not in text


def test_input_form_from_spec():
    msg = decode(b"KQ.AZNLETS20.AZ.TXT\nNAM/SAMPLE,ALEX.DOB/19700101.SEX/M")
    assert msg == Message(fmt="text", mke="KQ", ori="AZNLETS20", dst=("AZ",))
    assert_no_personal_data(msg)


def test_input_form_with_destinations_control_field_and_decision_elements():
    msg = decode(
        b"DQ.NV0130000.CA.OR.WA0000000.*Z5ABC.TXT\r\n"
        b"RSN/I.PUR/C.OLN/S1234567.ATN/SA DOE.IMQ/Y"
    )
    assert msg.dst == ("CA", "OR", "WA0000000")
    assert (msg.ctl, msg.pur, msg.rsn, msg.atn, msg.imq) == ("Z5ABC", "C", "I", "SA DOE", True)
    assert_no_personal_data(msg)


def test_body_glued_to_txt_on_the_header_line():
    msg = decode(b"DQ.NV0130000.CA.TXTRSN/N.OLN/S1234567.IMQ/N")
    assert (msg.dst, msg.rsn, msg.imq) == (("CA",), "N", False)


def test_destination_ori_starting_with_txt_letters_is_a_destination():
    msg = decode(b"DQ.CA0000000.TXT000000.TXT\nOLN/S1234567")
    assert msg.dst == ("TXT000000",)


def test_output_form_from_spec():
    payload = (
        b"AM.NLNLEHELP\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374 AZNLETS20\n"
        b"TXT\nNEW HELP MESSAGE"
    )
    msg = decode(payload)
    assert msg == Message(fmt="text", mke="AM", ori="NLNLEHELP", dst=("AZNLETS20",))


def test_output_form_with_control_field_on_the_clock_line():
    payload = (
        b"DR.CA0000000\r\n10:01 08/22/2011 35048\r\n10:01 08/22/2011 08374 AZNLETS20*Z5\r\n"
        b"TXT\r\nNAM/SAMPLE,ALEX.DOB/19700101"
    )
    msg = decode(payload)
    assert (msg.mke, msg.ori, msg.dst, msg.ctl) == ("DR", "CA0000000", ("AZNLETS20",), "Z5")
    assert_no_personal_data(msg)


def test_output_form_variants_period_after_ori_and_destination_on_txt_line():
    payload = b"AM.NLNLEHELP.\n10:01 08/22/2011 35048\n10:01 08/22/2011 08374\nOR.*Z5.TXT\nHI"
    msg = decode(payload)
    assert (msg.mke, msg.ori, msg.dst, msg.ctl) == ("AM", "NLNLEHELP", ("OR",), "Z5")


def test_leading_blank_lines_are_skipped():
    assert decode(b"\r\n  \nKQ.AZNLETS20.AZ.TXT\nX/1").mke == "KQ"
    assert detect_format(b"\n  <x/>") == "xml"
    assert detect_format(b" \t{}") == "json"
    assert detect_format(b" \r\n") is None


XML = b"""<?xml version="1.0"?>
<n2:NLETS xmlns:n2="http://example.invalid/n2" xmlns:nh2="http://example.invalid/nh2"
          xmlns:j="http://example.invalid/j">
  <n2:NLETSMessageHeader>
    <nh2:MessageKeyCodeText>DQ</nh2:MessageKeyCodeText>
    <nh2:OriginatingORIID>VTICE0900</nh2:OriginatingORIID>
    <nh2:DestinationORIID>CA</nh2:DestinationORIID>
    <nh2:DestinationORIID>NV0130000</nh2:DestinationORIID>
    <nh2:DocumentControlFieldText>A1</nh2:DocumentControlFieldText>
  </n2:NLETSMessageHeader>
  <n2:NLETSInquiryData>
    <n2:ReasonCode>I</n2:ReasonCode>
    <j:PurposeCode>C</j:PurposeCode>
    <j:AttentionText>SA DOE</j:AttentionText>
    <n2:ImageRequestIndicator>true</n2:ImageRequestIndicator>
    <j:PersonName>SAMPLE,ALEX</j:PersonName>
    <j:PersonBirthDate>19700101</j:PersonBirthDate>
  </n2:NLETSInquiryData>
</n2:NLETS>"""


def test_xml_header_and_body_fields():
    msg = decode(XML)
    assert msg == Message(fmt="xml", mke="DQ", ori="VTICE0900", dst=("CA", "NV0130000"),
                          ctl="A1", pur="C", rsn="I", atn="SA DOE", imq=True)  # fmt: skip
    assert_no_personal_data(msg)


def test_xml_prefixes_vary_and_default_namespace_works():
    other = XML.replace(b"n2:", b"ns9:").replace(b"xmlns:n2", b"xmlns:ns9").replace(b"nh2:", b"h:")
    other = other.replace(b"xmlns:nh2", b"xmlns:h")
    assert decode(other) == decode(XML)
    plain = b"<NLETS><NLETSMessageHeader><MessageKeyCodeText>RQ</MessageKeyCodeText>" \
            b"<OriginatingORIID>AZ0000000</OriginatingORIID><DestinationORIID>CA</DestinationORIID>" \
            b"</NLETSMessageHeader></NLETS>"  # fmt: skip
    assert decode(plain).mke == "RQ"


def test_xml_body_element_names_come_from_config():
    payload = XML.replace(b"j:PurposeCode", b"j:WhyCode")
    assert decode(payload).pur is None
    assert decode(payload, XmlFields(pur=("WhyCode",))).pur == "C"


def test_xml_photo_indicator_false_and_y():
    assert decode(XML.replace(b">true<", b">false<")).imq is False
    assert decode(XML.replace(b">true<", b">Y<")).imq is True


JSON = (b'{"mke":"DQ","ori":"VTICE0900","dst":["CA"],"ctl":"A1","pur":"C","rsn":null,'
        b'"atn":"SA DOE","imq":false,"body":{"NAM":"SAMPLE,ALEX","DOB":"19700101"}}')  # fmt: skip


def test_json():
    msg = decode(JSON)
    assert msg == Message(fmt="json", mke="DQ", ori="VTICE0900", dst=("CA",), ctl="A1",
                          pur="C", atn="SA DOE")  # fmt: skip
    assert_no_personal_data(msg)


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"   \r\n",
        b"D.AZNLETS20.AZ.TXT\nX",  # key too short
        b"DQ1.AZNLETS20.AZ.TXT\nX",  # key with a digit
        b"dq.AZNLETS20.AZ.TXT\nX",  # lower case key
        b"DQ.AZNLETS2.AZ.TXT\nX",  # ORI of 8
        b"DQ.1ZNLETS20.AZ.TXT\nX",  # ORI not starting with letters
        b"DQ.AZNLETS20.AZ\nX",  # no TXT
        b"DQ.AZNLETS20.TXT\nX",  # no destination
        b"DQ.AZNLETS20.AZ.NV.OR.WA.UT.CO.TXT\nX",  # six destinations
        b"DQ.AZNLETS20.A.TXT\nX",  # bad destination
        b"DQ.AZNLETS20.AZ.*ABCDEFGHIJK.TXT\nX",  # control field over 10
        b"AM.NLNLEHELP\nnot a clock\n10:01 x\nTXT\nX",
        b"AM.NLNLEHELP\n10:01 08/22/2011 1\n10:01 08/22/2011 2 AZNLETS20\nNOT\nX",
        b"<NLETS><unclosed></NLETS>",
        b"<NLETS><Other/></NLETS>",
        b'{"mke":"DQ","ori":"VTICE0900","dst":["CA"],"extra":1}',
        b'{"mke":"DQ","dst":["CA"]}',
        b'{"mke":"DQ","ori":"VTICE0900","dst":"CA"}',
        b'{"mke":"DQ","ori":"VTICE0900","dst":["CA"]',
        b'{"mke":"DQ","ori":"vtice0900","dst":["CA"]}',
    ],
)
def test_malformed(payload):
    with pytest.raises(Malformed):
        decode(payload)


def test_malformed_messages_never_quote_the_payload():
    with pytest.raises(Malformed) as info:
        decode(b"DQ.SAMPLEALEX.AZ.TXT\nNAM/SAMPLE,ALEX")
    assert "SAMPLE" not in str(info.value)


def test_xml_entity_expansion_and_external_entities_are_refused():
    bomb = (b'<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
            b'<!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>'
            b"<NLETS>&lol2;</NLETS>")  # fmt: skip
    external = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b"<NLETS><NLETSMessageHeader><MessageKeyCodeText>&e;</MessageKeyCodeText>"
                b"</NLETSMessageHeader></NLETS>")  # fmt: skip
    for payload in (bomb, external):
        with pytest.raises(Malformed):
            decode(payload)
