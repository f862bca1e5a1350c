"""``stategate replay``: what a policy would have done to logged traffic.

Every decision line holds every field a decision reads (key, ORI, destinations,
purpose, reason, ATN, photo, direction), so a logged message can be decided again
under another policy without the message itself.  Rejected lines stay rejected: their
headers were never read.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import msgspec

from ._fastmatch import Matcher
from ._types import LogRecord, Message


class Transition(msgspec.Struct):
    before: str
    after: str
    old_rule: str
    new_rule: str
    count: int


class ReplayResult(msgspec.Struct):
    lines: int
    changed: int
    transitions: list[Transition]
    actions: dict[str, int]  # "allow->deny": n, by action only


def reference_counts(records: Iterable[LogRecord], matcher: Matcher) -> dict[tuple, int]:
    """(logged action, logged rule, new action, new rule) -> lines, one record at a
    time: the plain statement of what the compiled scanner computes."""
    counts: Counter = Counter()
    for r in records:
        if r.action == "reject" or r.mke is None or r.ori is None:
            counts[(r.action, r.rule, r.action, r.rule)] += 1
            continue
        msg = Message(r.fmt or "text", r.mke, r.ori, r.dst or (), r.ctl, r.pur, r.rsn, r.atn,
                      bool(r.imq))  # fmt: skip
        action, rule, _, _, _ = matcher.decide(msg, r.dir)
        counts[(r.action, r.rule, action, rule)] += 1
    return dict(counts)


def summarize(counts: dict[tuple, int]) -> ReplayResult:
    transitions = [Transition(b, a, o, n, c) for (b, o, a, n), c in
                   sorted(counts.items(), key=lambda kv: (kv[0][0] == kv[0][2], -kv[1], kv[0]))]  # fmt: skip
    by_action: Counter = Counter()
    for t in transitions:
        by_action[f"{t.before}->{t.after}"] += t.count
    changed = sum(t.count for t in transitions if t.before != t.after)
    lines = sum(t.count for t in transitions)
    return ReplayResult(lines, changed, transitions, dict(by_action))
