"""``stategate demo``: switch, proxy and traffic on loopback, then a summary.

Everything runs in this one process on 127.0.0.1 with ephemeral ports: a simulated
state switch, the real proxy (the same :class:`~proxy._server.Proxy` that
``stategate run`` starts) with the example policy, and client connections sending
mixed synthetic queries.  Nothing leaves the machine and every person is synthetic.
"""

from __future__ import annotations

import sys
import time
from collections import Counter
from pathlib import Path

import msgspec
import trio

from ._config import load_config
from ._decode import Malformed, decode
from ._fastmatch import Matcher
from ._framing import frame, make_framer
from ._log import DecisionLog
from ._policy import BUILTIN_CATEGORIES, compile_policy
from ._server import Proxy
from ._switch import SimulatedSwitch
from ._traffic import TrafficGenerator

EXAMPLE_POLICY = Path(__file__).resolve().parent / "examples" / "policy.toml"
#: The demo shows DHS traffic at a visible share; the benchmarks use the seed ratio.
DEMO_DHS_SHARE = 0.08
QUIET = 0.5  # seconds without a reply before a client stops waiting


class _Client:
    def __init__(self) -> None:
        self.sent = 0
        self.replies = Counter()  # by message key


async def _client(port: int, payloads: list[bytes], framing: str, term: bytes, out: _Client) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    framer = make_framer(framing, 1 << 24, term)
    async with stream:

        async def receive() -> None:
            while True:
                with trio.move_on_after(QUIET) as scope:
                    data = await stream.receive_some(65536)
                if scope.cancelled_caught and out.sent == len(payloads):
                    return
                if scope.cancelled_caught:
                    continue
                if not data:
                    return
                for ev in framer.feed(data):
                    if ev[0] == "frame":
                        try:
                            key = decode(ev[1]).mke
                        except Malformed:
                            key = "undecodable"
                        out.replies[key] += 1

        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive)
            for i in range(0, len(payloads), 50):
                chunk = payloads[i : i + 50]
                await stream.send_all(b"".join(frame(p, framing, term) for p in chunk))
                out.sent += len(chunk)
                await trio.sleep(0.002)


def summarize(log_path: Path) -> dict[str, Counter]:
    """Counts from a decision log: queries in by group and action, responses out,
    keys, rejects.  Streams the file line by line."""
    by_group: Counter = Counter()
    out_by_group: Counter = Counter()
    by_key: Counter = Counter()
    rules: Counter = Counter()
    shadows: Counter = Counter()
    dmv_forwarded_out: Counter = Counter()  # by group: DMV responses that left the state
    decoder = msgspec.json.Decoder()
    with open(log_path, "rb") as f:
        for line in f:
            rec = decoder.decode(line)
            if "seq" not in rec:
                continue
            group = ",".join(rec["groups"]) or "(no group)"
            if rec["dir"] == "in":
                by_group[(group, rec["action"])] += 1
                by_key[(rec["mke"] or "-", rec["action"])] += 1
            else:
                out_by_group[(group, rec["action"])] += 1
                if rec["forwarded"] and rec["mke"] in BUILTIN_CATEGORIES["dmv"]:
                    dmv_forwarded_out[group] += 1
            rules[rec["rule"]] += 1
            if rec["shadow"]:
                shadows[rec["shadow"]] += 1
    return {"in": by_group, "out": out_by_group, "key": by_key, "rule": rules, "shadow": shadows,
            "dmv_out": dmv_forwarded_out}  # fmt: skip


def _table(title: str, counts: Counter, rows: list[str], label: str) -> list[str]:
    actions = ("allow", "deny", "reject")
    width = max([len(label)] + [len(r) for r in rows]) + 2
    lines = [title, f"  {label:<{width}}" + "".join(f"{a:>9}" for a in actions) + f"{'total':>9}"]
    for r in rows:
        cells = [counts[(r, a)] for a in actions]
        lines.append(f"  {r:<{width}}" + "".join(f"{c:>9}" for c in cells) + f"{sum(cells):>9}")
    return lines


def print_summary(counts: dict[str, Counter], log_path: Path, client_stats: dict, seconds: float) -> None:
    p = print
    groups = sorted({g for g, _ in counts["in"]} | {g for g, _ in counts["out"]})
    p("")
    p(f"stategate demo: {client_stats['sent']} synthetic queries on "
      f"{client_stats['connections']} connections in {seconds:.1f}s")  # fmt: skip
    dhs_in = sum(n for (g, _), n in counts["in"].items() if "dhs_immigration" in g.split(","))
    dhs_denied = counts["in"][("dhs_immigration", "deny")]
    dhs_out = counts["out"][("dhs_immigration", "allow")]
    if dhs_in:
        p(f"DHS immigration agencies asked {dhs_in} times; {dhs_denied} denied with an ER; "
          f"{dhs_out} responses left the state to them, {counts['dmv_out']['dhs_immigration']} "
          "of them carrying DMV data.")
    p("")
    for line in _table("Queries arriving (in), by agency group:", counts["in"], groups, "group"):
        p(line)
    p("")
    for line in _table("Responses leaving the state (out), by agency group:", counts["out"], groups, "group"):
        p(line)
    p("")
    keys = sorted({k for k, _ in counts["key"]}, key=lambda k: -sum(counts["key"][(k, a)] for a in ("allow", "deny", "reject")))
    for line in _table("Queries arriving, by message key:", counts["key"], keys, "key"):
        p(line)
    p("")
    p("Deciding rules:  " + ", ".join(f"{r} {n}" for r, n in counts["rule"].most_common()))
    if counts["shadow"]:
        p("Shadow rules (logged, not enforced):  "
          + ", ".join(f"{r} {n}" for r, n in counts["shadow"].most_common()))  # fmt: skip
    p(f"Replies received by the clients: {dict(sorted(client_stats['replies'].items()))}")
    p(f"Switch received {client_stats['switch_received']} messages and answered "
      f"{client_stats['switch_answered']}.")  # fmt: skip
    p("")
    p(f"Decision log: {log_path}  ({sum(counts['rule'].values())} lines, no personal data)")
    p(f"Follow it live:   tail -f {log_path}")
    p(f"Decide one message yourself:   stategate decide -c {EXAMPLE_POLICY.resolve()} MSGFILE")


def run_demo(*, messages: int, seed: int, framing: str, log_path: str, connections: int) -> int:
    config = load_config(EXAMPLE_POLICY)
    policy = compile_policy(config, str(EXAMPLE_POLICY))
    path = Path(log_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    term = config.proxy.terminator.encode("latin-1")
    gen = TrafficGenerator(seed, policy.state, dhs_share=DEMO_DHS_SHARE, malformed_share=0.01)
    payloads = [g.payload for g in gen.queries(messages)]
    connections = max(1, connections)
    shares = [payloads[i::connections] for i in range(connections)]
    clients = [_Client() for _ in shares]
    switch = SimulatedSwitch(framing=framing, terminator=term, state_ori=policy.local_ori, seed=seed)

    async def main() -> None:
        async with trio.open_nursery() as nursery:
            port = await nursery.start(switch.run)
            cfg = msgspec.structs.replace(
                config,
                proxy=msgspec.structs.replace(
                    config.proxy, listen="127.0.0.1:0", upstream=f"127.0.0.1:{port}", framing=framing
                ),
            )
            with DecisionLog(path) as log:
                proxy = Proxy(cfg, Matcher(policy), log, config_path=str(EXAMPLE_POLICY))
                await nursery.start(proxy.run)
                print(f"switch on 127.0.0.1:{port}, proxy on 127.0.0.1:{proxy.port} "
                      f"({framing}), policy rev {policy.rev[:12]}; sending {messages} queries ...",
                      file=sys.stderr)  # fmt: skip
                async with trio.open_nursery() as senders:
                    for share, c in zip(shares, clients):
                        senders.start_soon(_client, proxy.port, share, framing, term, c)
                proxy.stop()
            nursery.cancel_scope.cancel()

    start = time.monotonic()
    trio.run(main)
    seconds = time.monotonic() - start
    replies: Counter = Counter()
    for c in clients:
        replies.update(c.replies)
    stats = {
        "sent": sum(c.sent for c in clients),
        "connections": connections,
        "replies": replies,
        "switch_received": len(switch.received),
        "switch_answered": switch.responses_sent,
    }
    print_summary(summarize(path), path, stats, seconds)
    return 0
