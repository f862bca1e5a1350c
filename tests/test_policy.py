"""Decision semantics (SPEC section 5), checked on the plain-Python twin and the
compiled matcher alike."""

from __future__ import annotations

import pytest

from proxy._fastmatch import Matcher, pattern_matches
from proxy._policy import decide, ori_matches
from proxy._types import Message

from .conftest import make_policy

HEAD = '[policy]\nstate = "CA"\nlocal_ori = "CA0000000"\n'


def both(policy_text: str, msg: Message, direction: str = "in"):
    policy = make_policy(HEAD + policy_text)
    twin = decide(policy, msg, direction)
    compiled = Matcher(policy).decide(msg, direction)
    assert compiled == (twin.action, twin.rule, twin.shadow, twin.agency, twin.groups)
    return twin


def msg(**kw) -> Message:
    base = dict(fmt="text", mke="DQ", ori="AZ0000000", dst=("CA",))
    base.update(kw)
    return Message(**base)


@pytest.mark.parametrize(
    ("entry", "value", "expected"),
    [
        ("VTICE0900", "VTICE0900", True),
        ("VTICE0900", "VTICE0901", False),
        ("??ICE????", "TXICE0300", True),
        ("??ICE????", "TXHSI0300", False),
        ("??ICE????", "TXICE030", False),
        ("CA*", "CA0000000", True),
        ("CA*", "CA", True),
        ("CA*", "AZ0000000", False),
        ("*", "ANYTHING1", True),
        ("C?*", "C", False),
        ("CA", "CA", True),
        ("CA", "CA0000000", False),
    ],
)
def test_patterns(entry, value, expected):
    assert ori_matches(entry, value) is expected
    assert pattern_matches(entry, value) is expected


def test_first_match_decides_and_default_applies():
    rules = ('[[rules]]\nid = "a"\naction = "allow"\nmke = ["DQ"]\n'
             '[[rules]]\nid = "d"\naction = "deny"\nmke = ["DQ", "RQ"]\n')  # fmt: skip
    assert both(rules, msg()).rule == "a"
    assert both(rules, msg(mke="RQ")).action == "deny"
    v = both(rules, msg(mke="KQ"))
    assert (v.action, v.rule) == ("allow", "default")
    v = both('default = "deny"\n' + rules, msg(mke="KQ"))
    assert (v.action, v.rule) == ("deny", "default")


def test_shadow_rule_is_noted_and_does_not_decide():
    rules = ('[[rules]]\nid = "s1"\naction = "deny"\nshadow = true\n'
             '[[rules]]\nid = "s2"\naction = "deny"\nshadow = true\n'
             '[[rules]]\nid = "d"\naction = "allow"\nmke = ["DQ"]\n'
             '[[rules]]\nid = "s3"\naction = "deny"\nshadow = true\nmke = ["RQ"]\n')  # fmt: skip
    v = both(rules, msg())
    assert (v.action, v.rule, v.shadow) == ("allow", "d", "s1")
    v = both(rules, msg(mke="RQ"))
    assert (v.action, v.rule, v.shadow) == ("allow", "default", "s1")
    # a shadow rule after the deciding one is not noted
    v = both(rules.replace('id = "s1"\naction = "deny"\nshadow = true\n', 'id = "s1"\naction = "deny"\nshadow = true\nmke = ["XX"]\n')
             .replace('id = "s2"\naction = "deny"\nshadow = true\n', 'id = "s2"\naction = "deny"\nshadow = true\nmke = ["XX"]\n'),
             msg())  # fmt: skip
    assert v.shadow is None


def test_groups_agency_and_direction():
    rules = ('[groups.dhs]\nori = ["??ICE????"]\n[groups.fed]\nori = ["DC*", "TXICE0300"]\n'
             '[[rules]]\nid = "in"\naction = "deny"\nagency = ["@dhs"]\n'
             '[[rules]]\nid = "out"\naction = "deny"\ndirection = "out"\nagency = ["@dhs"]\n')  # fmt: skip
    v = both(rules, msg(ori="TXICE0300"))
    assert (v.action, v.rule, v.agency, v.groups) == ("deny", "in", "TXICE0300", ("dhs", "fed"))
    # out: the agency is the first destination
    v = both(rules, msg(ori="CA0000000", dst=("TXICE0300", "NV")), "out")
    assert (v.rule, v.agency) == ("out", "TXICE0300")
    v = both(rules, msg(ori="CA0000000", dst=("NV", "TXICE0300")), "out")
    assert (v.rule, v.agency) == ("default", "NV")
    v = both(rules.replace('direction = "out"', 'direction = "any"'), msg(ori="CA0000000", dst=("TXICE0300",)), "out")
    assert v.rule == "out"


def test_photo_purpose_reason_attention_dst():
    assert both('[[rules]]\nid = "p"\naction = "deny"\nphoto = true\n', msg(imq=True)).rule == "p"
    assert both('[[rules]]\nid = "p"\naction = "deny"\nphoto = true\n', msg()).rule == "default"
    assert both('[[rules]]\nid = "p"\naction = "deny"\nphoto = false\n', msg()).rule == "p"
    pur = '[[rules]]\nid = "p"\naction = "deny"\npurpose = ["none", "E"]\n'
    assert both(pur, msg()).rule == "p"
    assert both(pur, msg(pur="E")).rule == "p"
    assert both(pur, msg(pur="C")).rule == "default"
    # "none" names a missing code; a code spelled "none" is a code like any other
    assert both(pur, msg(pur="none")).rule == "default"
    assert both('[[rules]]\nid = "p"\naction = "deny"\npurpose = ["C"]\n', msg(pur="none")).rule == "default"
    rsn = '[[rules]]\nid = "r"\naction = "deny"\nreason = ["I"]\n'
    assert both(rsn, msg(rsn="I")).rule == "r"
    assert both(rsn, msg()).rule == "default"
    atn = '[[rules]]\nid = "a"\naction = "deny"\nattention = "missing"\n'
    assert both(atn, msg()).rule == "a"
    assert both(atn, msg(atn="SA DOE")).rule == "default"
    dst = '[[rules]]\nid = "d"\naction = "deny"\ndst = ["NV", "OR*"]\n'
    assert both(dst, msg(dst=("CA", "NV"))).rule == "d"
    assert both(dst, msg(dst=("OR0000000",))).rule == "d"
    assert both(dst, msg(dst=("CA",))).rule == "default"


def test_conditions_are_anded_lists_are_ored():
    rule = '[[rules]]\nid = "x"\naction = "deny"\nmke = ["DQ", "RQ"]\nphoto = true\n'
    assert both(rule, msg(mke="RQ", imq=True)).rule == "x"
    assert both(rule, msg(mke="RQ")).rule == "default"
    assert both(rule, msg(mke="KQ", imq=True)).rule == "default"


def test_more_than_64_rules():
    rules = "".join(f'[[rules]]\nid = "r{i}"\naction = "{"allow" if i % 2 else "deny"}"\n'
                    f'agency = ["AZ{i:07d}"]\n' for i in range(150))  # fmt: skip
    assert both(rules, msg(ori="AZ0000149")).rule == "r149"
    assert both(rules, msg(ori="AZ0000070")).rule == "r70"
    assert both(rules, msg(ori="AZ0000200")).rule == "default"


def test_more_parties_than_the_table_holds():
    """The compiled matcher keeps at most CACHE_LIMIT (65,536) parties and starts
    afresh when full: answers stay right across two clears."""
    policy = make_policy(HEAD + '[groups.ice]\nori = ["??ICE????"]\n'
                         '[[rules]]\nid = "i"\naction = "deny"\nagency = ["@ice"]\n'
                         '[[rules]]\nid = "n"\naction = "deny"\ndst = ["NV*"]\n')
    matcher = Matcher(policy)
    for i in range(140_000):
        ori = f"TXICE{i % 10000:04d}" if i % 3 == 0 else f"AZ{i:07d}"
        dst = (f"NV{i:07d}",) if i % 5 == 0 else ("CA",)
        m = msg(ori=ori, dst=dst)
        twin = decide(policy, m, "in")
        assert matcher.decide(m, "in") == (twin.action, twin.rule, twin.shadow, twin.agency, twin.groups)
