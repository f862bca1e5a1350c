"""The policy as stategate understands it, and its plain-Python decision.

:func:`compile_policy` turns a :class:`~proxy._config.Config` into a :class:`Policy`:
categories expanded into key sets, cross-references checked, and ``rev`` computed as
the SHA-256 of the policy's canonical JSON form, so that every log line names the
exact policy that made it.

:func:`decide` is the plain-Python twin of the compiled matcher in ``_fastmatch.pyx``:
it states the semantics of SPEC section 5 as directly as possible and is what the
differential tests hold the compiled matcher to.
"""

from __future__ import annotations

import hashlib
from typing import Literal

import msgspec

from ._config import Config, ConfigError
from ._decode import XmlFields
from ._types import Message

BUILTIN_CATEGORIES: dict[str, tuple[str, ...]] = {
    "dmv": ("DQ", "DQG", "DNQ", "KQ", "RQ", "RQG", "RNQ", "RPQ",
            "DR", "DRG", "DNR", "KR", "RR", "RNR", "RPR"),
    "chri": ("IQ", "FQ", "AQ", "IR", "FR", "AR"),
    "immigration": ("IAQ", "IAR"),
    "admin": ("AM", "AML", "ER", "SM"),
}  # fmt: skip


class Group(msgspec.Struct, frozen=True):
    name: str
    ori: tuple[str, ...]
    description: str = ""


class Rule(msgspec.Struct, frozen=True):
    """One rule with categories expanded; a condition that is None is absent."""

    id: str
    action: Literal["allow", "deny"]
    direction: Literal["in", "out", "any"]
    agency: tuple[str, ...] | None
    mke: tuple[str, ...] | None
    photo: bool | None
    purpose: tuple[str, ...] | None
    reason: tuple[str, ...] | None
    attention: Literal["missing", "present"] | None
    dst: tuple[str, ...] | None
    shadow: bool
    why: str


class Policy(msgspec.Struct, frozen=True):
    state: str
    local_ori: str
    default: Literal["allow", "deny"]
    mode: Literal["enforce", "monitor"]
    deny_reply: bool
    groups: tuple[Group, ...]
    categories: dict[str, tuple[str, ...]]
    rules: tuple[Rule, ...]
    xml: XmlFields
    rev: str = ""

    def canonical(self) -> bytes:
        """The canonical form hashed into ``rev``: sorted-key JSON, ``rev`` excluded."""
        data = msgspec.to_builtins(self)
        del data["rev"]
        return msgspec.json.encode(data, order="sorted")

    def party_entries(self) -> list[str]:
        """Every ORI, code and pattern that names a party in the rules (``agency``,
        ``dst``) and the groups, ``@group`` references left out: what decides whether
        a party is one the policy names at all (the compiled matcher's sieve)."""
        named = [e for r in self.rules for x in (r.agency, r.dst) if x is not None for e in x]
        return [e for e in named if not e.startswith("@")] + [e for g in self.groups for e in g.ori]


def compile_policy(config: Config, source: str = "<config>") -> Policy:
    """Check cross-references and build the policy; raise ConfigError naming the key."""
    groups = tuple(
        Group(name, tuple(g.ori), g.description) for name, g in config.groups.items()
    )
    group_names = {g.name for g in groups}
    categories = dict(BUILTIN_CATEGORIES)
    categories.update({name: tuple(keys) for name, keys in config.categories.items()})

    rules: list[Rule] = []
    seen: dict[str, int] = {}
    for i, r in enumerate(config.rules):
        where = f"{source}: `rules[{i}]"
        if r.id in seen:
            raise ConfigError(f"{where}.id`: duplicate rule id {r.id!r} (also rules[{seen[r.id]}])")
        seen[r.id] = i
        for key in ("agency", "dst"):
            for entry in getattr(r, key) or ():
                if entry.startswith("@") and entry[1:] not in group_names:
                    raise ConfigError(f"{where}.{key}`: undefined group {entry!r}")
        mke: tuple[str, ...] | None = None
        if r.mke is not None:
            keys: set[str] = set()
            for entry in r.mke:
                if entry.startswith("@"):
                    if entry[1:] not in categories:
                        raise ConfigError(f"{where}.mke`: undefined category {entry!r}")
                    keys.update(categories[entry[1:]])
                else:
                    keys.add(entry)
            mke = tuple(sorted(keys))
        rules.append(
            Rule(
                id=r.id,
                action=r.action,
                direction=r.direction,
                agency=tuple(r.agency) if r.agency is not None else None,
                mke=mke,
                photo=r.photo,
                purpose=tuple(r.purpose) if r.purpose is not None else None,
                reason=tuple(r.reason) if r.reason is not None else None,
                attention=r.attention,
                dst=tuple(r.dst) if r.dst is not None else None,
                shadow=r.shadow,
                why=r.why,
            )
        )
    p = config.policy
    policy = Policy(
        state=p.state,
        local_ori=p.local_ori,
        default=p.default,
        mode=p.mode,
        deny_reply=p.deny_reply,
        groups=groups,
        categories=categories,
        rules=tuple(rules),
        xml=config.formats.xml,
    )
    rev = hashlib.sha256(policy.canonical()).hexdigest()
    return msgspec.structs.replace(policy, rev=rev)


# ----------------------------------------------------------- the plain-Python twin


class Verdict(msgspec.Struct, frozen=True):
    action: str  # "allow" | "deny"
    rule: str  # deciding rule id or "default"
    shadow: str | None
    agency: str | None
    groups: tuple[str, ...]


def ori_matches(entry: str, value: str) -> bool:
    """``?`` is any one character; a trailing ``*`` is any rest, even none."""
    if entry.endswith("*"):
        prefix = entry[:-1]
        if len(value) < len(prefix):
            return False
        value = value[: len(prefix)]
    else:
        prefix = entry
    if len(prefix) != len(value):
        return False
    return all(p == "?" or p == v for p, v in zip(prefix, value))


def groups_of(policy: Policy, agency: str | None) -> tuple[str, ...]:
    if agency is None:
        return ()
    return tuple(g.name for g in policy.groups if any(ori_matches(e, agency) for e in g.ori))


def _entry_matches(entry: str, value: str, groups: tuple[str, ...], policy: Policy) -> bool:
    if entry.startswith("@"):
        if value is None:
            return False
        return entry[1:] in groups_of(policy, value)
    return ori_matches(entry, value)


def _code_matches(codes: tuple[str, ...], value: str | None) -> bool:
    """``none`` in a rule stands for a missing code, never for a code spelled
    ``none`` (a message carrying ``PUR/none`` has a code)."""
    if value is None:
        return "none" in codes
    return value != "none" and value in codes


def rule_matches(
    rule: Rule, msg: Message, direction: str, agency: str | None, policy: Policy
) -> bool:
    if rule.direction != "any" and rule.direction != direction:
        return False
    if rule.agency is not None:
        if agency is None:
            return False
        groups = groups_of(policy, agency)
        if not any(_entry_matches(e, agency, groups, policy) for e in rule.agency):
            return False
    if rule.mke is not None and msg.mke not in rule.mke:
        return False
    if rule.photo is not None and msg.imq != rule.photo:
        return False
    if rule.purpose is not None and not _code_matches(rule.purpose, msg.pur):
        return False
    if rule.reason is not None and not _code_matches(rule.reason, msg.rsn):
        return False
    if rule.attention == "missing" and msg.atn is not None:
        return False
    if rule.attention == "present" and msg.atn is None:
        return False
    if rule.dst is not None:
        if not any(
            _entry_matches(e, d, groups_of(policy, d), policy) for d in msg.dst for e in rule.dst
        ):
            return False
    return True


def agency_of(msg: Message, direction: str) -> str | None:
    """The party whose access is decided: the originator for ``in``, else the first
    destination."""
    if direction == "in":
        return msg.ori
    return msg.dst[0] if msg.dst else None


def decide(policy: Policy, msg: Message, direction: str) -> Verdict:
    """The first rule whose every condition holds decides; shadow rules only note."""
    agency = agency_of(msg, direction)
    groups = groups_of(policy, agency)
    shadow = None
    for rule in policy.rules:
        if rule_matches(rule, msg, direction, agency, policy):
            if rule.shadow:
                if shadow is None:
                    shadow = rule.id
                continue
            return Verdict(rule.action, rule.id, shadow, agency, groups)
    return Verdict(policy.default, "default", shadow, agency, groups)
