"""``stategate check``: the policy as stategate understood it, in words."""

from __future__ import annotations

from ._config import Config
from ._policy import BUILTIN_CATEGORIES, Policy, Rule


def _list(items: tuple[str, ...]) -> str:
    return ", ".join(items)


def describe_rule(rule: Rule, categories: dict[str, tuple[str, ...]]) -> list[str]:
    conds = [f"direction {rule.direction}"]
    if rule.agency is not None:
        conds.append(f"agency in [{_list(rule.agency)}]")
    if rule.mke is not None:
        conds.append(f"key in [{_list(rule.mke)}]")
    if rule.photo is not None:
        conds.append("photo requested" if rule.photo else "no photo requested")
    if rule.purpose is not None:
        conds.append(f"purpose in [{_list(rule.purpose)}]")
    if rule.reason is not None:
        conds.append(f"reason in [{_list(rule.reason)}]")
    if rule.attention is not None:
        conds.append(f"ATN {rule.attention}")
    if rule.dst is not None:
        conds.append(f"a destination in [{_list(rule.dst)}]")
    verb = f"SHADOW (log only, would {rule.action})" if rule.shadow else rule.action.upper()
    lines = [f"  {rule.id}: {verb} when " + " and ".join(conds)]
    if rule.why:
        lines.append(f"      why: {rule.why}")
    return lines


def _listen_tls(config: Config) -> str:
    tls = config.proxy.tls
    if tls is None:
        return "off"
    if not tls.ca:
        return "on"
    return "on, client certificates " + ("required" if tls.require_client_cert else "checked when sent")


def _upstream_tls(config: Config) -> str:
    tls = config.proxy.upstream_tls
    if tls is None:
        return "off"
    return f"on, switch checked against {tls.ca or 'the system store'}" + (
        ", our certificate presented" if tls.cert else "")


def describe_policy(config: Config, policy: Policy, *, matcher: str) -> str:
    out = [
        f"config ok: policy rev {policy.rev}",
        f"matcher: {matcher}",
        f"state {policy.state}, local ORI {policy.local_ori}, mode {policy.mode}, "
        f"default {policy.default}, deny replies {'on' if policy.deny_reply else 'off'}",
        f"proxy: listen {config.proxy.listen} -> upstream {config.proxy.upstream or '(not set)'}, "
        f"framing {config.proxy.framing}, max_frame {config.proxy.max_frame}",
        f"tls: listen {_listen_tls(config)}; upstream {_upstream_tls(config)}",
        f"log: {config.log.path}",
        "",
        f"groups ({len(policy.groups)}):",
    ]
    for g in policy.groups:
        desc = f"  ({g.description})" if g.description else ""
        out.append(f"  @{g.name}: {_list(g.ori)}{desc}")
    out.append(f"categories ({len(policy.categories)}):")
    for name, keys in sorted(policy.categories.items()):
        origin = ""
        if name in config.categories:
            origin = "  (config, overrides built-in)" if name in BUILTIN_CATEGORIES else "  (config)"
        out.append(f"  @{name}: {_list(keys)}{origin}")
    out.append(f"rules, first match decides ({len(policy.rules)}):")
    for rule in policy.rules:
        out.extend(describe_rule(rule, policy.categories))
    out.append(f"  otherwise: {policy.default.upper()} (default)")
    return "\n".join(out)
