"""Speed never changes an answer: the compiled matcher and engine against their
plain-Python twins on large random inputs."""

from __future__ import annotations

import os
import random
from pathlib import Path

import msgspec
import pytest

from proxy._config import parse_config
from proxy._demo import EXAMPLE_POLICY
from proxy._fastmatch import (AVX512, Engine, Matcher, fast_decode_text, fast_decode_xml, pattern_matches, sieve_entries,
                              sieve_limit)
from proxy._pipeline import ReferenceEngine, Sequencer
from proxy._policy import compile_policy, decide
from proxy._traffic import TrafficGenerator, switch_response
from proxy._types import Message

ORIS = ["VTICE0900", "TXICE0300", "DCHSI0000", "AZ0000000", "AZ0070000", "CA0000000",
        "NV0130000", "DCFBI0000", "ORICE0001", "WA1234567"]  # fmt: skip
CODES2 = ["CA", "AZ", "NV", "OR", "NL", "TX"]
KEYS = ["DQ", "RQ", "KQ", "IQ", "FQ", "AM", "DR", "RR", "IR", "IAQ", "BQ", "ZZZ"]
PATTERNS = ["??ICE????", "DC*", "AZ00?0000", "*", "CA*", "N?", "??HSI????", "WA*"]
TOTAL_DECISIONS = 1_000_000


def _pick(rng: random.Random, pool: list[str], lo: int = 1, hi: int = 3) -> list[str]:
    return rng.sample(pool, rng.randint(lo, min(hi, len(pool))))


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(f'"{i}"' for i in items) + "]"


def random_policy_text(rng: random.Random, parties: list[str] | None = None) -> str:
    """A random policy; its groups and rules name ORIs, codes and patterns from
    ``parties`` if given, else from a fixed mix."""
    lines = ['[policy]', 'state = "CA"', 'local_ori = "CA0000000"',
             f'default = "{rng.choice(["allow", "deny"])}"',
             f'mode = "{rng.choice(["enforce", "monitor"])}"']  # fmt: skip
    groups = [f"g{i}" for i in range(rng.randint(0, 4))]
    for g in groups:
        lines += [f"[groups.{g}]", f"ori = {_toml_list(_pick(rng, parties or ORIS + PATTERNS + CODES2, 1, 4))}"]
    cats = ["dmv", "chri", "admin", "immigration"]
    if rng.random() < 0.5:
        lines += ["[categories]", f"boats = {_toml_list(['BQ', 'BR'])}"]
        cats.append("boats")
    for i in range(rng.randint(0, 80)):
        lines += ["[[rules]]", f'id = "r{i}"', f'action = "{rng.choice(["allow", "deny"])}"',
                  f'direction = "{rng.choice(["in", "out", "any"])}"']  # fmt: skip
        if rng.random() < 0.4:
            lines.append(f"agency = {_toml_list(_pick(rng, (parties or ORIS + PATTERNS) + ['@' + g for g in groups]))}")
        if rng.random() < 0.4:
            lines.append(f"mke = {_toml_list(_pick(rng, KEYS + ['@' + c for c in cats]))}")
        if rng.random() < 0.2:
            lines.append(f"photo = {rng.choice(['true', 'false'])}")
        if rng.random() < 0.25:
            lines.append(f"purpose = {_toml_list(_pick(rng, ['none', 'C', 'F', 'E', 'CJ']))}")
        if rng.random() < 0.25:
            lines.append(f"reason = {_toml_list(_pick(rng, ['none', 'I', 'N', 'V', 'IV']))}")
        if rng.random() < 0.2:
            lines.append(f'attention = "{rng.choice(["missing", "present"])}"')
        if rng.random() < 0.2:
            dsts = parties or CODES2 + ORIS[:4] + ["N*"]
            lines.append(f"dst = {_toml_list(_pick(rng, dsts + ['@' + g for g in groups]))}")
        if rng.random() < 0.15:
            lines.append("shadow = true")
    return "\n".join(lines) + "\n"


def random_message(rng: random.Random) -> Message:
    return Message(
        fmt="text",
        mke=rng.choice(KEYS),
        ori=rng.choice(ORIS),
        dst=tuple(rng.choice(CODES2 + ORIS) for _ in range(rng.randint(1, 5))),
        ctl=None,
        pur=rng.choice([None, None, "C", "F", "E", "J", "none", "CJ", "CF"]),
        rsn=rng.choice([None, "I", "N", "V", "T", "none", "IV", "VI"]),
        atn=rng.choice([None, "SA DOE"]),
        imq=rng.random() < 0.3,
    )


def test_compiled_matcher_agrees_with_the_twin_on_a_million_random_messages():
    rng = random.Random(20261122)
    policies = 50
    per_policy = TOTAL_DECISIONS // policies
    messages = [random_message(rng) for _ in range(per_policy)]
    checked = 0
    outcomes = set()
    for _ in range(policies):
        policy = compile_policy(parse_config(random_policy_text(rng)))
        matcher = Matcher(policy)
        for m in messages:
            direction = "in" if rng.random() < 0.6 else "out"
            twin = decide(policy, m, direction)
            got = matcher.decide(m, direction)
            expected = (twin.action, twin.rule, twin.shadow, twin.agency, twin.groups)
            assert got == expected, (m, direction, policy)
            outcomes.add((twin.action, twin.rule == "default", twin.shadow is None))
            checked += 1
    assert checked >= TOTAL_DECISIONS
    # The random policies really exercise the paths: both actions, rule and default,
    # with and without a shadow.
    assert len(outcomes) == 8


def _mutate(rng: random.Random, payload: bytes) -> bytes:
    b = bytearray(payload)
    for _ in range(rng.randint(1, 3)):
        if not b:
            break
        op = rng.randrange(3)
        i = rng.randrange(len(b))
        if op == 0:
            b[i] = rng.randrange(256)
        elif op == 1:
            del b[i]
        else:
            b.insert(i, rng.choice(b".\n/*<>{}\"TXQ"))
    return bytes(b)


def test_compiled_engine_agrees_with_the_reference_engine_on_random_streams():
    """Framing, decoding and deciding together, over random chunkings, including
    mutated and oversize frames, queries and the switch's responses to them (whose
    agency, in the out direction, is a nine-character destination)."""
    rng = random.Random(7)
    for trial in range(40):
        policy = compile_policy(parse_config(random_policy_text(rng)))
        matcher = Matcher(policy)
        framing = rng.choice(["len32", "delimited"])
        term = b"\r\n\x7f"
        max_frame = rng.choice([200, 600, 1 << 20])
        gen = TrafficGenerator(trial, dhs_share=0.2, malformed_share=0.05)
        payloads = []
        for g in gen.queries(800):
            p = g.payload
            if rng.random() < 0.4:
                p = switch_response(p, policy.local_ori, rng) or p
            if rng.random() < 0.1:
                p = _mutate(rng, p)
            if framing == "delimited":
                p = p.replace(term, b"")
            payloads.append(p)
        from proxy._framing import frame

        stream = b"".join(frame(p, framing, term) for p in payloads)
        direction = rng.choice(["in", "out"])
        fast_seq, ref_seq, decide_seq = Sequencer(0, "t"), Sequencer(0, "t"), Sequencer(0, "t")
        fast = Engine(direction, 3, "127.0.0.1:9", framing, max_frame, term, fast_seq)
        ref = ReferenceEngine(direction, 3, "127.0.0.1:9", framing, max_frame, term, ref_seq)
        decider = Engine(direction, 3, "127.0.0.1:9", framing, max_frame, term, decide_seq)
        pos = 0
        while pos < len(stream):
            n = rng.choice([1, 7, 100, 1000, 5000, 70000])
            chunk = stream[pos : pos + n]
            pos += n
            a = fast.feed(chunk, matcher, "T")
            b = ref.feed(chunk, policy, "T")
            assert decider.decide(chunk, matcher) == a.count
            # decisions by (direction, action, rule), as /metrics and bench/year.py read them
            assert fast_seq.counts == ref_seq.counts == decide_seq.counts
            assert a.lines == b.lines  # byte for byte what msgspec makes of the records
            assert a.count == b.count and (not a.count or a.last_seq == b.last_seq)
            assert a.records == b.records
            assert a.forward == b.forward
            assert a.replies == b.replies  # byte for byte what ReplyWriter writes
        assert fast.pending == ref.pending == 0


def test_xml_start_tags_kept_from_earlier_documents_change_no_answer():
    """The XML fast path keeps the start tags it read in the kept prologue's scope and
    takes a later tag with the same bytes as read.  A tag that declares a namespace
    is not kept (its children's prefixes need the declaration read); one whose first
    '>' is inside an attribute value is not either; a new prologue (whose scope binds
    other prefixes) lets the kept tags go.  Each document in turn through one engine
    and matcher is decided as the reference engine decides it."""
    nh2, nh3 = 'xmlns:nh2="urn:nh"', 'xmlns:nh3="urn:nh"'
    body = "<n2:NLETSInquiryData>{}</n2:NLETSInquiryData></n2:NLETS>"
    header = ("<n2:NLETSMessageHeader><nh2:MessageKeyCodeText>DQ</nh2:MessageKeyCodeText>"
              "<nh2:OriginatingORIID>AZ0070000</nh2:OriginatingORIID>"
              "<nh2:DestinationORIID>CA</nh2:DestinationORIID></n2:NLETSMessageHeader>")  # fmt: skip

    def doc(inquiry: str, root: str = nh2, head: str = header) -> bytes:
        return _xml_doc(root, rest=head + body.format(inquiry))

    declares = '<x:Item xmlns:x="urn:x"><x:Sub/></x:Item>'  # x bound by the tag itself
    gt_in_value = '<AttentionText a=">">OFFICER 3</AttentionText>'  # its first '>' in a value
    payloads = [
        doc(declares),
        doc(declares),  # the same tag again: read again, so its children's x is bound
        doc("<x:Sub/>"),  # x unbound here: rejected
        doc(gt_in_value),
        doc(gt_in_value),  # the attention is OFFICER 3 both times
        doc('<AttentionText a="x">OFFICER 4</AttentionText>'),
        doc("<AttentionText>OFFICER 5</AttentionText>"),
        doc("<AttentionText>OFFICER 6</AttentionText>"),  # kept, then taken
        doc("<AttentionText/>"),
        doc("<AttentionText>OFFICER 7</AttentionText>", root=nh3),  # a new prologue: nh2 unbound
        doc("<AttentionText>OFFICER 8</AttentionText>"),  # nh2's prologue again
        doc("<AttentionText>OFFICER 9</AttentionText>", root=nh3, head=header.replace("nh2:", "nh3:")),
    ]
    seen = [(r.action, r.atn) for r in _one_document_at_a_time(payloads)]
    # the cases are what they say: read, rejected, and the attentions as written
    assert ("reject", None) in seen and seen.count(("reject", None)) < len(seen)
    assert {"OFFICER 3", "OFFICER 6", "OFFICER 8"} <= {atn for _, atn in seen}


def test_xml_markup_kept_from_earlier_documents_changes_no_answer():
    """The XML fast path keeps the markup of documents it read in the kept prologue's
    scope, as paths of segments between their character data, and reads a document
    whose markup is a path's, byte for byte, by that path: its header values and body
    elements are the runs of character data where the path's were.  Runs that vary,
    markup inside a run, entities, whitespace or text between elements, a self-closing
    element read for a field, text after the root, a document cut off, a value that
    fails its checks and a new prologue are each decided as the reference engine
    decides them, one document after another through one engine and matcher."""
    header = ("<n2:NLETSMessageHeader><nh2:MessageKeyCodeText>{mke}</nh2:MessageKeyCodeText>"
              "<nh2:OriginatingORIID>{ori}</nh2:OriginatingORIID>{between}"
              "<nh2:DestinationORIID>CA</nh2:DestinationORIID>{dst}</n2:NLETSMessageHeader>")  # fmt: skip

    def doc(inquiry: str, ori: str = "AZ0070000", between: str = "", tail: str = "", mke: str = "DQ",
            dst: str = "", root: str = 'xmlns:nh2="urn:nh"') -> bytes:
        head = header.format(mke=mke, ori=ori, between=between, dst=dst)
        return _xml_doc(root, rest=f"{head}<n2:NLETSInquiryData>{inquiry}</n2:NLETSInquiryData></n2:NLETS>{tail}")

    def atn(text: str) -> str:
        return f"<AttentionText>{text}</AttentionText>"

    two_dst = "<nh2:DestinationORIID>{}</nh2:DestinationORIID>"
    payloads = [
        doc(atn("OFFICER 1")),
        doc(atn("OFFICER 2"), ori="DCHSI0000"),  # the same markup: another agency, another attention
        doc(atn("")),  # the attention's run empty
        doc(atn("A &amp; B")),  # an entity in the run: the reference reads it
        doc(atn("OFFICER<b/>3")),  # markup inside the run: another path
        doc(atn("OFFICER 4") + atn("OFFICER 5")),  # the first attention is the one read
        doc(atn("OFFICER 6") + atn("OFFICER 7")),
        doc("<AttentionText/>X"),  # self-closing: its value is empty, not the text after it
        doc("<AttentionText/>Y"),
        doc("<AttentionText/><b/>"),  # ... nor the run after it, empty here
        doc("<AttentionText/>Q<b/>"),
        doc(atn("OFFICER 8"), between="\n  "),  # whitespace between elements: part of a segment
        doc(atn("OFFICER 9"), between="\n  "),
        doc(atn("OFFICER 10"), between="\n "),  # other whitespace: another path
        doc(atn("OFFICER 11"), between="Z"),  # text between elements: a run that varies
        doc(atn("OFFICER 12"), between="ZZ"),
        doc(atn("OFFICER 13"), tail="  "),  # whitespace after the root
        doc(atn("OFFICER 14"), tail=" x"),  # text after the root: not well-formed
        doc(atn("OFFICER 15"))[:-4],  # cut off inside the root's end tag
        doc(atn("OFFICER 16"))[:-11],  # cut off where the root's end tag would be
        doc(atn("OFFICER 17"), mke=" KQ "),  # values stripped after reading
        doc(atn("OFFICER 18"), mke="D1"),  # a key that fails its check
        doc(atn("OFFICER 19"), ori="AZ00"),  # an ORI that fails its check
        doc(atn("OFFICER 20"), dst=two_dst.format("NV")),  # two destinations
        doc(atn("OFFICER 21"), dst=two_dst.format("DCFBI0000")),
        doc(atn("OFFICER 22"), root='xmlns:nh2="urn:nh2"'),  # a new prologue: nothing kept taken
        doc(atn("OFFICER 23"), root='xmlns:nh3="urn:nh"'),  # nh2 unbound now: rejected
        doc(atn("OFFICER 24"), root='xmlns:nh3="urn:nh"'),
        doc(atn("OFFICER 25")),
        doc(atn("OFFICER 26")),
    ]
    matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(8)))))
    seen = [(r.action, r.ori, r.atn) for r in _one_document_at_a_time(payloads, matcher)]
    # the cases are what they say: read by a path, rejected, and the attentions as written
    assert {("DCHSI0000", "OFFICER 2"), ("AZ0070000", "OFFICER 4"), ("AZ0070000", "OFFICER 6"),
            ("AZ0070000", "OFFICER 26")} <= {(o, a) for _, o, a in seen}
    assert ("AZ0070000", "OFFICER 7") not in {(o, a) for _, o, a in seen}
    assert sum(action == "reject" for action, _, _ in seen) >= 2 * 4
    for direction in ("in", "out"):
        hits, segments, size = matcher.xml_markup_kept(direction)
        # read by a path: the empty attention, OFFICER 6, 9, 12, 17, 18, 19 and 21
        assert hits >= 8 and 0 < segments and 0 < size


def test_xml_markup_kept_changes_no_answer_on_mutated_documents():
    """Generated documents and the switch's responses to them, a third with bytes
    changed, inserted or removed anywhere after the prologue (in markup or in values),
    one after another through one engine and matcher: each is decided as the
    reference engine decides it, while most are read by kept paths.  (A changed
    prologue replaces the kept one, and what was kept with it: the prologue test.)"""
    rng = random.Random(11)
    matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(12)))))
    gen = TrafficGenerator(5, dhs_share=0.2, malformed_share=0.05, formats=(("xml", 1),))
    payloads, unchanged = [], 0
    for g in gen.queries(1500):
        p = g.payload
        if rng.random() < 0.3:
            p = switch_response(p, matcher.policy.local_ori, rng) or p
        if rng.random() < 0.3:
            k = max(0, p.find(b"<n2:NLETSMessageHeader>"))
            p = p[:k] + _mutate(rng, p[k:])
        else:
            unchanged += p.startswith(b"<")
        payloads.append(p)
    _one_document_at_a_time(payloads, matcher)
    for direction in ("in", "out"):
        hits, _, size = matcher.xml_markup_kept(direction)
        # A changed document kept can shadow the path of an unchanged one, which is
        # then found by trying the next sibling: so nearly every unchanged one is read
        # by a path
        assert hits >= 0.9 * unchanged
        assert size <= 65536


def _counted_doc(*counts: int) -> bytes:
    """_xml_doc with an attribute on each of the first len(counts) header elements,
    whose value is that count: markup that differs from document to document."""
    doc = _xml_doc('xmlns:nh2="urn:nh"')
    for name, count in zip((b"MessageKeyCodeText", b"OriginatingORIID", b"DestinationORIID"), counts):
        doc = doc.replace(b"<nh2:%s>" % name, b'<nh2:%s n="%d">' % (name, count), 1)
    return doc


def test_xml_markup_kept_is_bounded_and_starts_again_when_full():
    """Documents with new markup, each after one whose markup repeats, fill the kept
    markup: more segments than it holds (16 first attributes, 16 second ones under
    each, and a third that is new every time, two segments more each).  It never holds more than 1,024 segments or 64 KiB, it starts
    again when full, the repeated document is read by its path throughout, and every
    document is decided as the reference engine decides it."""
    matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(8)))))
    engines = _engine_pair("in")
    repeated = _counted_doc()
    last = starts = 0
    for i in range(1200):
        for p in (_counted_doc(i % 16, i // 16 % 16, i), repeated):
            _as_the_reference_decides(engines, matcher, p)
        hits, segments, size = matcher.xml_markup_kept("in")
        assert segments <= 1024 and size <= 65536
        starts += segments < last
        last = segments
    assert starts >= 1
    # the repeated one, all but its first two times and once after each start again
    assert hits >= 1200 - 2 - starts


def test_xml_markup_kept_tries_few_where_markup_never_repeats():
    """Where documents differ from every kept one at the same place (an attribute that
    counts), at most 16 are kept there, so a document tries at most 16; and after 64
    in a row that no path reads, the next ones are read without trying the paths
    (none of them is read by a path), as a switch whose markup never repeats would
    otherwise pay for trying and keeping on every document.  Every document is
    decided as the reference engine decides it."""
    matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(8)))))
    engines = _engine_pair("in")
    repeated = _counted_doc()
    for i in range(100):  # new markup at the same place, each after the repeated one
        _as_the_reference_decides(engines, matcher, _counted_doc(i))
        _as_the_reference_decides(engines, matcher, repeated)
    hits, segments, _ = matcher.xml_markup_kept("in")
    assert hits >= 100 - 2
    assert segments <= 16 * 5  # 16 paths under the root, the repeated one's among them, of five segments
    for i in range(100, 200):  # new markup, 100 in a row
        _as_the_reference_decides(engines, matcher, _counted_doc(i))
    for _ in range(50):
        _as_the_reference_decides(engines, matcher, repeated)
    assert matcher.xml_markup_kept("in")[0] == hits  # resting: not tried


def test_xml_markup_kept_for_each_direction_apart():
    """Queries from Nlets and the switch's responses may begin with different
    prologues.  Each direction keeps its own prologue, start tags and markup, so
    documents that alternate between the two are still read by kept paths, and each
    is decided as the reference engine decides it."""
    matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(8)))))
    engines = {d: _engine_pair(d) for d in ("in", "out")}
    for i in range(40):
        for direction, root in (("in", 'xmlns:nh2="urn:nh"'), ("out", 'xmlns:nh2="urn:nh" xmlns:x="urn:x"')):
            _as_the_reference_decides(engines[direction], matcher, _xml_doc(root, ori=f"AZ00{i:02d}000"))
    for direction in ("in", "out"):
        hits, _, _ = matcher.xml_markup_kept(direction)
        assert hits >= 40 - 2  # all but the first two: one keeps the prologue, one the markup


def test_log_lines_escape_what_json_must():
    """The engine writes log lines itself: values with quotes and backslashes (which
    the fast paths pass through) come out exactly as msgspec writes them, with or
    without a peer."""
    from proxy._framing import frame

    policy = compile_policy(parse_config(random_policy_text(random.Random(3))))
    matcher = Matcher(policy)
    payloads = [
        b'KQ.AZ0070000.CA.*Q"1\\.TXT\nATN/SA "DOE" \\ 2.PUR/C"\\.RSN/\\',
        b'DQ.NV0130000.CA.TXT\nATN/\\\\\\"',
        b'<n2:NLETS xmlns:n2="urn:n"><n2:NLETSMessageHeader><n2:MessageKeyCodeText>DQ'
        b'</n2:MessageKeyCodeText><n2:OriginatingORIID>AZ0070000</n2:OriginatingORIID>'
        b'<n2:DestinationORIID>CA</n2:DestinationORIID><n2:DocumentControlFieldText>a"b\\c'
        b'</n2:DocumentControlFieldText></n2:NLETSMessageHeader><AttentionText>"Q" \\</AttentionText>'
        b"</n2:NLETS>",
        b'{"mke":"DQ","ori":"AZ0070000","dst":["CA"],"atn":"x \\"y\\" \\\\ \\u00e9"}',
    ]
    # the C writer is what writes these: the fast paths read them
    assert fast_decode_text(payloads[0]).atn == 'SA "DOE" \\ 2'
    assert fast_decode_text(payloads[1]) is not None
    assert fast_decode_xml(payloads[2], matcher.xml_names).ctl == 'a"b\\c'
    stream = b"".join(frame(p, "len32") for p in payloads)
    for peer in ("127.0.0.1:9", None, 'odd"peer\\'):
        fast = Engine("in", 3, peer, "len32", 1 << 20, b"", Sequencer(0, "t")).feed(stream, matcher, "T")
        ref = ReferenceEngine("in", 3, peer, "len32", 1 << 20, b"", Sequencer(0, "t")).feed(stream, policy, "T")
        assert fast.lines == ref.lines
        assert [r.action for r in fast.records] != ["reject"] * len(payloads)
        assert any(r.atn and '"' in r.atn for r in fast.records)


def test_a_chunk_fed_without_a_time_is_stamped_with_the_clock():
    """With no ``ts`` the engine stamps the chunk itself, as the proxy runs it: every
    line of the chunk, those the fast paths write and the one the reference decoder's
    path writes (an XML comment: declined), has the same stamp, the clock's between the
    calls before and after, and each line is otherwise the one a given ``ts`` makes;
    a second chunk with a fresh run id carries it."""
    from datetime import datetime

    from proxy._framing import frame
    from proxy._pipeline import utc_timestamp

    policy = compile_policy(parse_config(random_policy_text(random.Random(4))))
    matcher = Matcher(policy)
    gen = TrafficGenerator(6, policy.state, malformed_share=0.1)
    payloads = [q.payload for q in gen.queries(300)] + [
        b'<!-- x --><n2:NLETS xmlns:n2="urn:n"><n2:NLETSMessageHeader><n2:MessageKeyCodeText>DQ'
        b"</n2:MessageKeyCodeText><n2:OriginatingORIID>AZ0070000</n2:OriginatingORIID>"
        b"<n2:DestinationORIID>CA</n2:DestinationORIID></n2:NLETSMessageHeader></n2:NLETS>"
    ]
    assert fast_decode_xml(payloads[-1], matcher.xml_names) is None  # the slow path's
    stream = b"".join(frame(p, "len32") for p in payloads)
    seq = Sequencer(0, "run1")
    engine = Engine("in", 3, "127.0.0.1:9", "len32", 1 << 20, b"", seq)
    before = utc_timestamp()
    batch = engine.feed(stream, matcher)
    after = utc_timestamp()
    stamps = {r.ts for r in batch.records}
    assert len(stamps) == 1 and batch.count == len(payloads)
    (ts,) = stamps
    assert before <= ts <= after  # one fixed-width form, so text order is time order
    datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ")  # the RFC 3339 form, else ValueError
    given = Engine("in", 3, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "run1")).feed(stream, matcher, ts)
    assert batch.lines == given.lines
    assert batch.records[-1].mke == "DQ" and batch.records[-1].action != "reject"
    seq.run_id = "run2"  # a head is made per chunk: a new run id shows at once
    assert {r.id.split("-")[0] for r in engine.feed(stream, matcher).records} == {"run2"}


def test_engine_gives_back_a_large_buffer_and_keeps_a_small_one():
    """A chunk of tiny frames makes log lines many times its size; the engine gives
    such a buffer back after the chunk instead of keeping it at every connection, and
    keeps an ordinary chunk's for the next one."""
    from proxy._framing import frame

    policy = compile_policy(parse_config(random_policy_text(random.Random(5))))
    matcher = Matcher(policy)
    engine = Engine("in", 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "t"))
    tiny = frame(b"x", "len32") * 30_000  # 150 KB of malformed frames: 30,000 reject lines
    batch = engine.feed(tiny, matcher, "T")
    assert batch.count == 30_000 and len(batch.lines) > 8 * (1 << 20)
    assert engine.kept <= 1 << 20
    gen = TrafficGenerator(2, policy.state, malformed_share=0.0)
    ordinary = b"".join(frame(q.payload, "len32") for q in gen.queries(200))
    batch = engine.feed(ordinary, matcher, "T")
    assert batch.count == 200
    assert len(batch.lines) <= engine.kept <= 1 << 20  # kept for the next chunk


def test_engine_agrees_when_parties_fall_into_more_classes_than_a_table_word_holds():
    """Parties the policy treats alike share a class, and a slot of the compiled
    party table holds a class up to 1,022 in the word itself, larger ones beside it.
    A policy that tells 1,200 ORIs apart (a rule each) gives 1,200 classes: every
    message of every format, from those ORIs and to them, decided the first time
    (the party entered, the table growing) and again (found), agrees with the
    reference engine."""
    from proxy._framing import frame
    from proxy._traffic import render

    oris = [f"AZ{i:05d}00" for i in range(1200)]
    rules = "".join(
        f'[[rules]]\nid = "r{i}"\naction = "{"deny" if i % 3 else "allow"}"\ndirection = "any"\n'
        f'agency = ["{ori}"]\n' + ('mke = ["DQ"]\n' if i % 7 == 0 else "")
        for i, ori in enumerate(oris)
    )
    policy = compile_policy(parse_config(
        '[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\ndefault = "deny"\n' + rules))  # fmt: skip
    matcher = Matcher(policy)
    rng = random.Random(11)
    for direction in ("in", "out"):
        payloads = []
        for rnd in range(2):
            for i, ori in enumerate(oris):
                fmt = ("text", "xml", "json")[(i + rnd) % 3]
                mke = ("DQ", "RQ")[(i // 3 + rnd) % 2]
                if direction == "in":
                    p = render(fmt, mke, ori, ["CA"], None, None, None, None, False, {}, rng=rng)
                else:
                    p = render(fmt, mke, "CA0000000", [ori], None, None, None, None, False, {}, rng=rng)
                payloads.append(p)
        stream = b"".join(frame(p, "len32") for p in payloads)
        fast = Engine(direction, 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "t"))
        ref = ReferenceEngine(direction, 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "t"))
        a = fast.feed(stream, matcher, "T")
        b = ref.feed(stream, policy, "T")
        assert a.count == b.count == len(payloads)
        assert a.lines == b.lines
        assert a.replies == b.replies
        rules_hit = {r.rule for r in b.records}
        assert {"r0", "r1", "r1100", "r1199"} <= rules_hit  # classes on both sides of 1,022


def test_engine_agrees_on_destinations_across_the_party_table_emptied():
    """The compiled engine keeps the last destination's answer beside the party table
    (nearly every message names the state's own code), and empties that table when it
    holds CACHE_LIMIT (65,536) parties.  70,000 messages to the state's code from as
    many new ORIs (a rule names them all, so the sieve lets each into the table): the
    code is the first party entered and the 65,536th ORI empties the table, after
    which the code's class number stands for that ORI's.  Then 10,000 to the state's
    code, another state's, or a new 9-character ORI that a rule's pattern names,
    alternating and in runs, and photo requests from AZ and from Texas: a Texas ORI,
    which no entry matches, is decided as nobody, whose class is made again when the
    table is emptied.  Every log line is the reference engine's."""
    from proxy._framing import frame
    from proxy._traffic import render

    policy = compile_policy(parse_config(
        '[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n'
        '[[rules]]\nid = "to-nevada"\naction = "deny"\ndst = ["NV*"]\n'
        '[[rules]]\nid = "to-utah-dmv"\naction = "deny"\ndst = ["UT"]\nmke = ["@dmv"]\n'
        '[[rules]]\nid = "home-chri"\naction = "deny"\ndst = ["CA"]\nmke = ["@chri"]\n'
        '[[rules]]\nid = "az-photos"\naction = "deny"\nagency = ["AZ*"]\nphoto = true\n'))  # fmt: skip
    matcher = Matcher(policy)
    fast, ref = _engine_pair("in")
    rng = random.Random(5)
    payloads = []
    for i in range(80_000):
        k = 0 if i < 70_000 else i % 7 if i % 1000 < 500 else (i // 50) % 7  # alternating, then in runs
        dst = (["CA"], ["UT"], ["NV"], [f"NV{i:07d}"], ["CA", "UT"], ["UT", "CA"], [f"CA{i:07d}"])[k]
        # then photo requests too, from AZ and from Texas, which no rule names
        ori = f"TX{i:07d}" if i >= 70_000 and i % 8 == 1 else f"AZ{i:07d}"
        photo = i >= 70_000 and i % 4 == 1
        payloads.append(render(("text", "xml", "json")[i % 3], ("DQ", "IQ")[i % 2], ori,
                               dst, None, None, None, None, photo, {}, rng=rng))  # fmt: skip
    stream = b"".join(frame(p, "len32") for p in payloads)
    rules = set()
    for at in range(0, len(stream), 1 << 20):  # chunks cut through messages too
        a = fast.feed(stream[at:at + (1 << 20)], matcher, "T")
        b = ref.feed(stream[at:at + (1 << 20)], policy, "T")
        assert a.lines == b.lines
        assert a.forward == b.forward
        rules |= {r.rule for r in b.records}
    assert rules == {"to-nevada", "to-utah-dmv", "home-chri", "az-photos", "default"}
    # emptied once: of the 80,000 AZ ORIs, the NV ones and the codes entered, what
    # came after the 65,536th
    assert 0 < matcher.party_count < 80_000 - 65_536 + 3_000, matcher.party_count


def _packed(party: str) -> int:
    return sum((ord(c) & 63) << (6 * i) for i, c in enumerate(party))


def _near_miss(rng: random.Random, entries: list[str]) -> str:
    """A party of 1 to 9 characters of A-Z 0-9: random, or an entry with its wildcards
    filled, often then with a character changed or the length off by one."""
    alphabet = "AB09CIZ"
    if not entries or rng.random() < 0.2:
        return "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9)))
    e = rng.choice(entries)
    body = e[:-1] if e.endswith("*") else e
    party = [rng.choice(alphabet) if c == "?" else c for c in body]
    if e.endswith("*"):
        party += [rng.choice(alphabet) for _ in range(rng.randint(0, 3))]
    r = rng.random()
    if party and r < 0.3:
        party[rng.randrange(len(party))] = rng.choice(alphabet)
    elif r < 0.45:
        party.append(rng.choice(alphabet))
    elif party and r < 0.6:
        party.pop()
    party = "".join(c if c.isascii() and c.isalnum() and not c.islower() else "A" for c in party)
    return party[:9] or "A"


def _random_entry(rng: random.Random, valid: bool) -> str:
    """An ORI entry: 2 or 9 characters of A-Z 0-9 and '?', or up to 8 and a '*'; when
    not valid (a Policy made by hand), also other lengths and characters."""
    chars = "AB09CI?" + ("" if valid else "a-?*")
    if valid:
        n = rng.choice([2, 9, rng.randint(0, 8)])
        star = n not in (2, 9) or rng.random() < 0.2
        n = min(n, 8) if star else n
    else:
        n, star = rng.randint(0, 11), rng.random() < 0.4
    return "".join(rng.choice(chars) for _ in range(n)) + ("*" if star else "")


def test_sieve_lets_through_exactly_the_parties_an_entry_matches():
    """The compiled matcher's sieve (which parties can match an entry of the policy at
    all, so need the party table) is exact: a packed party of 1 to 9 characters
    passes its tests when and only when pattern_match finds an entry for it.  On
    random entries, valid and not, and near misses of them."""

    rng = random.Random(12)
    hits = misses = 0
    for trial in range(400):
        entries = [_random_entry(rng, valid=trial % 2 == 0) for _ in range(rng.randint(0, 12))]
        tests = sieve_entries(entries)
        for _ in range(200):
            party = _near_miss(rng, entries)
            key = _packed(party)
            passed = any(key & mask == k and lengths >> len(party) & 1 for mask, k, lengths in tests)
            matched = any(pattern_matches(e, party) for e in entries)
            assert passed == matched, (entries, party)
            hits += matched
            misses += not matched
    assert hits > 10_000 and misses > 10_000  # both sides really tried


@pytest.mark.parametrize("wide", [False, pytest.param(True, marks=pytest.mark.skipif(
    not AVX512, reason="this machine has no AVX-512"))])  # fmt: skip
def test_matcher_sieve_both_ways_passes_exactly_the_parties_an_entry_matches(wide):
    """The sieve as the matcher holds it, eight tests at a time (wide, AVX-512) or one
    at a time: on random policies of up to sieve_limit() tests (the most a sieve has,
    in two blocks of eight) and more (no sieve: every party passes), a party passes
    when and only when an entry of the policy matches it."""
    rng = random.Random(14)
    blocks = set()  # of each sieved policy, the most blocks of eight a length needs; no sieve: -1
    hits = misses = 0
    for trial in range(300):
        entries = sorted({_random_entry(rng, valid=True) for _ in range(rng.randint(1, 24))} - {""})
        if not entries:
            continue
        text = random_policy_text(rng, entries)
        policy = compile_policy(parse_config(text))
        entries = sorted(set(policy.party_entries()))
        matcher = Matcher(policy)
        most = max(sum(lengths >> n & 1 for _, _, lengths in sieve_entries(entries)) for n in range(1, 10))
        blocks.add((most + 7) // 8 if matcher.sieved else -1)
        for _ in range(100):
            party = _near_miss(rng, entries)
            matched = any(pattern_matches(e, party) for e in entries)
            assert matcher.sieve_passes(party, wide) == (matched or not matcher.sieved), (entries, party)
            hits += matched
            misses += not matched
    assert {-1, 1, 2} <= blocks, blocks  # one block, two, and no sieve
    assert hits > 3_000 and misses > 3_000


EXAMPLE_TEXT = Path(EXAMPLE_POLICY).read_text()


def test_sieve_limit_is_sixteen_tests_eight_at_a_time_and_twelve_one_at_a_time():
    """A policy whose entries make sieve_limit() tests has a sieve, one with a test more
    has none; the limit is 16 where the sieve tests eight at a time (AVX-512, unless
    STATEGATE_AVX512=0) and 12 where it tests one at a time (bench/README, "the sieve's
    limit eight at a time")."""
    wide = AVX512 and os.environ.get("STATEGATE_AVX512", "1") != "0"
    assert sieve_limit() == (16 if wide else 12)
    base = compile_policy(parse_config(EXAMPLE_TEXT))
    base_tests = len(sieve_entries(sorted(set(base.party_entries()))))
    for extra, sieved in ((sieve_limit() - base_tests, True), (sieve_limit() - base_tests + 1, False)):
        text = EXAMPLE_TEXT.replace('ori = ["DCFBI????"', 'ori = [' + "".join(f'"ZZ{i:07d}", ' for i in range(extra))
                                    + '"DCFBI????"')  # fmt: skip
        policy = compile_policy(parse_config(text))
        assert len(sieve_entries(sorted(set(policy.party_entries())))) == base_tests + extra
        assert Matcher(policy).sieved is sieved


def test_compiled_matcher_agrees_on_parties_the_sieve_passes_and_stops():
    """Random policies whose agency, destination and group entries make up to
    sieve_limit() sieve tests (a sieve) or more (none: every party through the table), and parties that
    match an entry or nearly do, of every length, in both directions: every decision,
    with its groups, is the twin's."""
    rng = random.Random(13)
    sizes = set()
    for trial in range(60):
        pool = [_random_entry(rng, valid=True) for _ in range(rng.choice([3, 8, 30]))]
        pool = [e for e in pool if e] or ["CA"]
        policy = compile_policy(parse_config(random_policy_text(rng, pool)))
        entries = sorted(set(policy.party_entries()))
        matcher = Matcher(policy)
        sizes.add(matcher.sieved)
        for _ in range(600):
            m = msgspec.structs.replace(random_message(rng), ori=_near_miss(rng, entries),
                                        dst=tuple(_near_miss(rng, entries) for _ in range(rng.randint(1, 3))))
            for direction in ("in", "out"):
                twin = decide(policy, m, direction)
                assert matcher.decide(m, direction) == (twin.action, twin.rule, twin.shadow, twin.agency,
                                                        twin.groups), (m, direction, policy)
    assert sizes == {True, False}  # policies with a sieve and without


def _xml_doc(root_attrs: str, prefix: str = "nh2", ori: str = "AZ0070000", rest: str | None = None) -> bytes:
    """A NIEM-like document whose root declares n2 and root_attrs, its header
    elements in prefix's namespace."""
    head = ('<?xml version="1.0" encoding="UTF-8"?>'
            f'<n2:NLETS xmlns:n2="http://www.nlets.org/niem2/1.0" {root_attrs}>')  # fmt: skip
    if rest is None:
        rest = (f"<n2:NLETSMessageHeader><{prefix}:MessageKeyCodeText>DQ</{prefix}:MessageKeyCodeText>"
                f"<{prefix}:OriginatingORIID>{ori}</{prefix}:OriginatingORIID>"
                f"<{prefix}:DestinationORIID>CA</{prefix}:DestinationORIID></n2:NLETSMessageHeader>"
                "<n2:NLETSInquiryData><AttentionText>OFFICER 1</AttentionText></n2:NLETSInquiryData>"
                "</n2:NLETS>")  # fmt: skip
    return (head + rest).encode()


def _one_document_at_a_time(payloads: list[bytes], matcher: Matcher | None = None) -> list:
    """Each payload in turn through one compiled engine and matcher (a random policy's,
    unless given), in each direction, against the reference engine: the same log
    lines, forwards and replies each time.  Returns the reference's records."""
    if matcher is None:
        matcher = Matcher(compile_policy(parse_config(random_policy_text(random.Random(8)))))
    records = []
    for direction in ("in", "out"):
        engines = _engine_pair(direction)
        for p in payloads:
            records += _as_the_reference_decides(engines, matcher, p)
    return records


def _engine_pair(direction: str) -> tuple[Engine, ReferenceEngine]:
    """A compiled engine and a reference engine for one connection's direction."""
    return (Engine(direction, 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "t")),
            ReferenceEngine(direction, 1, "127.0.0.1:9", "len32", 1 << 20, b"", Sequencer(0, "t")))  # fmt: skip


def _as_the_reference_decides(engines: tuple[Engine, ReferenceEngine], matcher: Matcher,
                              payload: bytes) -> list:
    """payload framed through both engines: the same log lines, forwards and replies.
    Returns the reference's records."""
    from proxy._framing import frame

    fast, ref = engines
    x = fast.feed(frame(payload, "len32"), matcher, "T")
    y = ref.feed(frame(payload, "len32"), matcher.policy, "T")
    assert x.lines == y.lines, payload
    assert x.forward == y.forward and x.replies == y.replies
    return y.records


def test_xml_prologue_kept_from_the_last_document_changes_no_answer():
    """The XML fast path keeps the last document's prologue (its declaration and root
    start tag) and the namespaces it declared, for a next document that begins with
    the same bytes.  Documents that repeat it, differ from it in one byte (its last,
    or the last declaration's prefix, which the header then uses), stop inside or
    just after it, declare more namespaces than are kept, or have a root the fast path
    reads are all decided as the reference engine decides them, one after another
    through one engine and matcher."""
    nh2 = 'xmlns:nh2="urn:nh"'
    nh3 = 'xmlns:nh3="urn:nh"'  # the same length: only the prefix differs, 14 bytes from the end
    many = " ".join(f'xmlns:p{i}="urn:p{i}"' for i in range(16)) + " " + nh2
    a = _xml_doc(nh2)
    prologue = a[: a.index(b"<n2:NLETSMessageHeader>")]
    known_root = (b'<AttentionText xmlns:n2="urn:n">OFFICER 2<n2:NLETSMessageHeader>'
                  b"<n2:MessageKeyCodeText>DQ</n2:MessageKeyCodeText><n2:OriginatingORIID>AZ0070000"
                  b"</n2:OriginatingORIID><n2:DestinationORIID>CA</n2:DestinationORIID>"
                  b"</n2:NLETSMessageHeader></AttentionText>")  # fmt: skip
    payloads = [
        a,
        _xml_doc(nh2, ori="DCHSI0000"),  # the same prologue, another agency
        _xml_doc(nh3, prefix="nh3"),  # one byte off, in the last declaration
        _xml_doc(nh2, prefix="nh3"),  # nh2's prologue again, the header in a prefix it does not bind
        _xml_doc(nh3, prefix="nh3"),
        _xml_doc(nh3, prefix="nh2"),
        a,
        prologue[:-1] + b" " + a[len(prologue):],  # the root's '>' gone: not well-formed
        a,
        prologue,  # the prologue alone: cut off inside the root
        prologue + b"<",
        prologue + b"</n2:NLETS>",  # the root closed at once: no header
        _xml_doc(nh2, rest="<n2:NLETSMessageHeader></n2:NLETS>"),  # misnested after the prologue
        a.replace(b"UTF-8", b"utf-8"),
        a,
        _xml_doc(many),  # eighteen declarations: more than are kept
        _xml_doc(many, ori="VTICE0900"),
        a,
        known_root,  # a root the fast path reads: its text is the attention
        known_root,
        a,
    ]
    actions = [r.action for r in _one_document_at_a_time(payloads) if r.dir == "in"]
    assert "reject" in actions and actions.count("reject") < len(actions)  # both kinds were there
