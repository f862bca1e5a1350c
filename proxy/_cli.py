"""``stategate`` command line (SPEC section 7).

User mistakes (a bad config, a missing file) print one clear line on stderr and exit
non-zero, never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import NoReturn

from ._config import ConfigError, load_config
from ._logfiles import LogFileError
from ._query import BadLogLine


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"stategate: {message}", file=sys.stderr)
    raise SystemExit(status)


def _count(text: str) -> int:
    """An argument that counts something: a whole number, 0 or more."""
    try:
        n = int(text)
    except ValueError:
        n = -1
    if n < 0:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (a whole number, 0 or more)")
    return n


def compiled_matcher():
    """The compiled extension module; a loud error if it was not built."""
    try:
        from . import _fastmatch
    except ImportError as exc:
        raise UserError(
            "the compiled matcher proxy._fastmatch is missing or broken "
            f"({exc}); reinstall with `pip install -e .` (needs a C compiler and Cython)"
        ) from None
    return _fastmatch


def _load(path: str):
    from ._policy import compile_policy

    config = load_config(path)
    return config, compile_policy(config, path)


# ------------------------------------------------------------------- commands


def cmd_check(args: argparse.Namespace) -> int:
    fast = compiled_matcher()
    config, policy = _load(args.config)
    fast.Matcher(policy)  # the policy compiles into the matcher too
    from ._describe import describe_policy
    from ._server import tls_contexts

    tls_contexts(config, args.config)  # certificates and keys load

    print(describe_policy(config, policy, matcher=f"compiled ({Path(fast.__file__).name})"))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    fast = compiled_matcher()
    config, policy = _load(args.config)
    from ._framing import frame
    from ._pipeline import Sequencer, utc_timestamp

    if args.msgfile in (None, "-"):
        payload = sys.stdin.buffer.read()
    else:
        try:
            payload = Path(args.msgfile).read_bytes()
        except OSError as exc:
            raise UserError(f"{args.msgfile}: cannot read: {exc.strerror}") from None
    # A message file usually ends with a newline (or the legacy CR LF DEL) that is
    # not part of the message.
    payload = payload.rstrip(b"\r\n\x7f")
    # The file holds one unframed payload: frame it so the proxy's own engine, with
    # the config's max_frame, decides it exactly as it would on the wire.
    engine = fast.Engine(args.dir, 0, None, "len32", config.proxy.max_frame, b"\r\n\x7f",
                         Sequencer())  # fmt: skip
    batch = engine.feed(frame(payload, "len32"), fast.Matcher(policy), utc_timestamp())
    sys.stdout.buffer.write(batch.lines)
    sys.stdout.flush()
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    compiled_matcher()
    import trio

    from ._server import serve

    config = load_config(args.config)
    if not config.proxy.upstream:
        raise UserError(f"{args.config}: `proxy.upstream` is required to run")
    try:
        trio.run(serve, config, args.config, restrict_keyboard_interrupt_to_checkpoints=True)
    except (OSError, BaseExceptionGroup) as exc:
        # What stopped it starting (a listen address in use, a log directory it may
        # not make), out of the exception groups trio's nurseries wrap it in.
        while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
            exc = exc.exceptions[0]
        if not isinstance(exc, OSError):
            raise
        where = f"{exc.filename}: " if exc.filename else ""
        raise UserError(f"cannot start: {where}{exc.strerror or exc}") from None
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    compiled_matcher()
    from ._demo import run_demo

    return run_demo(
        messages=args.messages,
        seed=args.seed,
        framing=args.framing,
        log_path=args.log,
        connections=args.connections,
    )


def _log_arg(args: argparse.Namespace) -> str:
    if args.log:
        return args.log
    if getattr(args, "config", None):
        return load_config(args.config).log.path
    from ._query import DEFAULT_LOG

    return DEFAULT_LOG


def _filter(args: argparse.Namespace):
    from ._query import make_filter

    try:
        return make_filter(action=args.action, agency=args.agency, group=args.group,
                           mke=args.mke, rule=args.rule, direction=args.dir,
                           since=args.since, until=args.until)  # fmt: skip
    except ValueError as exc:
        raise UserError(str(exc)) from None


def _torn_note(path: Path, lineno: int) -> None:
    """What tail, stats and replay say of a torn last line, which they leave out."""
    print(f"stategate: {path}:{lineno}: left out a last line without its newline (a write in progress, "
          "or one cut short by a kill or a crash, whose message was not forwarded)", file=sys.stderr)  # fmt: skip


def cmd_tail(args: argparse.Namespace) -> int:
    from ._tail import Printer, run_tail

    printer = Printer(_filter(args), as_json=args.json, seals=args.seals)
    return run_tail(_log_arg(args), args.n, args.follow, printer, _torn_note)


def cmd_stats(args: argparse.Namespace) -> int:
    import msgspec

    from ._logfiles import expand
    from ._scan import weighted_rows
    from ._stats import (
        DISCLOSURE_COLUMNS,
        DISCLOSURE_FIELDS,
        count_by,
        disclosure,
        needed_fields,
        parse_by,
        render_csv,
        render_table,
    )

    query = _filter(args)
    files = expand(args.logs or [_log_arg(args)])

    def selected(fields: list[str]):
        need = list(dict.fromkeys(fields + query.fields))
        return ((row, n) for row, n in weighted_rows(files, need, query.lo, query.hi, _torn_note)
                if query.matches(row))  # fmt: skip

    if args.by:
        try:
            fields = parse_by(args.by)
        except ValueError as exc:
            raise UserError(str(exc)) from None
        counts = count_by(selected(needed_fields(fields)), fields)
        rows = [list(k) + [n] for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], str(kv[0])))]
        header = fields + ["count"]
        if args.json:
            print(msgspec.json.encode([dict(zip(header, row)) for row in rows]).decode())
            return 0
    else:
        reports = disclosure(selected(DISCLOSURE_FIELDS))
        if args.json:
            print(msgspec.json.encode(reports).decode())
            return 0
        header = [title for _, title in DISCLOSURE_COLUMNS]
        rows = [[getattr(rep, name) for name, _ in DISCLOSURE_COLUMNS] for rep in reports]
        if not args.csv:
            print("Disclosure report: queries arriving by agency group, and responses that left "
                  "the state to them")  # fmt: skip
            print(f"log: {', '.join(str(f) for f in files)}")
            monitor = sum(rep.denied_but_forwarded for rep in reports)
            if monitor:
                print(f"note: {monitor} denied queries were forwarded anyway (monitor mode)")
            print()
    print(render_csv(header, rows) if args.csv else render_table(header, rows))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from ._log import read_key
    from ._logfiles import expand
    from ._verify import verify

    key = None
    if args.key_file:
        try:
            key = read_key(args.key_file)
        except OSError as exc:
            raise UserError(str(exc)) from None
    files = expand(args.logs or [_log_arg(args)])
    result = verify(files, key)
    where = f"{len(files)} file(s)"
    if result.broken is not None:
        b = result.broken
        print(f"BROKEN at {b.file}:{b.line}: {b.reason}")
        print(f"checked {result.lines} lines and {result.seals} good seals in {where} before it")
        return 1
    print(f"OK: {result.lines} lines, {result.seals} seals, chain intact across {where}")
    if result.unsealed:
        print(f"unsealed: {result.unsealed} line(s) after the last seal, from {result.unsealed_from} "
              "(written after the last seal, e.g. by a proxy that was killed; not verifiable)")  # fmt: skip
    if result.torn:
        print(f"torn: the last line, {result.torn}, ends without a newline: a write in progress, or one "
              "cut short by a kill or a crash, whose message was not forwarded and which the proxy "
              "drops at its next start; not verifiable")  # fmt: skip
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    fast = compiled_matcher()
    import msgspec

    from ._logfiles import expand
    from ._replay import summarize
    from ._scan import replay_counts
    from ._stats import render_table

    _, policy = _load(args.config)
    files = expand(args.logs)
    query = _filter(args)
    result = summarize(replay_counts(files, fast.Matcher(policy), query.lo, query.hi, _torn_note))
    if args.json:
        print(msgspec.json.encode(result).decode())
        return 0
    print(f"replayed {result.lines} decisions from {len(files)} file(s) under policy rev "
          f"{policy.rev[:12]} ({args.config}): {result.changed} would change")  # fmt: skip
    print()
    print(render_table(["before -> after", "count"],
                       [[k, n] for k, n in sorted(result.actions.items(), key=lambda kv: -kv[1])]))  # fmt: skip
    print()
    rows = [[f"{t.before} -> {t.after}", t.old_rule, t.new_rule, t.count] for t in result.transitions]
    print(render_table(["transition", "logged rule", "new rule", "count"], rows))
    return 0


# ----------------------------------------------------------------------- main


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="stategate",
        description="Inline query-filtering proxy for a state's Nlets interface.",
    )
    parser.add_argument("--version", action="version", version=f"stategate {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the proxy", description="Run the proxy until SIGTERM or SIGINT.")
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate a config and print the policy as understood",
                       description="Validate the config and print the policy as understood.")  # fmt: skip
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser(
        "decide",
        help="decide one message and print its log line",
        description="Decide one unframed message (a file, or stdin) and print its log line.",
    )
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("--dir", choices=("in", "out"), default="in",
                   help="direction of the message (default: in, a query arriving)")  # fmt: skip
    p.add_argument("msgfile", nargs="?", metavar="MSGFILE", help="message file (default: stdin)")
    p.set_defaults(func=cmd_decide)

    p = sub.add_parser(
        "demo",
        help="run a simulated switch, the proxy and synthetic traffic on loopback",
        description="Run a simulated state switch, the proxy with the example policy and "
        "mixed synthetic traffic on loopback, then print a summary.",
    )
    p.add_argument("--messages", type=_count, default=3000, help="queries to send (default 3000)")
    p.add_argument("--connections", type=int, default=4, help="client connections (default 4)")
    p.add_argument("--seed", type=int, default=2026, help="traffic seed (default 2026)")
    p.add_argument("--framing", choices=("len32", "delimited"), default="len32")
    p.add_argument("--log", default="stategate-demo/decisions.jsonl", metavar="PATH",
                   help="decision log to write (replaced; default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_demo)

    def filters(p: argparse.ArgumentParser) -> None:
        p.add_argument("--action", help="allow, deny or reject (comma list)")
        p.add_argument("--agency", metavar="PAT", help="agency ORI pattern: '?' one character, trailing '*'")
        p.add_argument("--group", metavar="G", help="agency group (comma list)")
        p.add_argument("--mke", metavar="K", help="message key (comma list)")
        p.add_argument("--rule", metavar="ID", help="deciding or shadow rule id (comma list)")
        p.add_argument("--dir", choices=("in", "out"), help="direction")
        p.add_argument("--since", metavar="T", help="from this time on: RFC 3339, a date, or an age (2h, 7d)")
        p.add_argument("--until", metavar="T", help="before this time")

    p = sub.add_parser("tail", help="show the last decisions, then follow",
                       description="Show the last N decisions, then with -f follow the log across rotation.")  # fmt: skip
    p.add_argument("log", nargs="?", metavar="LOG", help="log base path (default: from -c, else the standard path)")
    p.add_argument("-c", "--config", metavar="FILE", help="take the log path from this config")
    p.add_argument("-n", type=_count, default=10, metavar="N", help="how many lines (default 10)")
    p.add_argument("-f", "--follow", action="store_true", help="keep following new lines")
    filters(p)
    p.add_argument("--json", action="store_true", help="raw JSON lines (for jq)")
    p.add_argument("--seals", action="store_true", help="show seal records too")
    p.set_defaults(func=cmd_tail)

    p = sub.add_parser("stats", help="count decisions; with no --by, the disclosure report",
                       description="Count decisions by any fields; with no --by, the disclosure report per agency group.")  # fmt: skip
    p.add_argument("logs", nargs="*", metavar="LOG", help="log base paths or files")
    p.add_argument("-c", "--config", metavar="FILE", help="take the log path from this config")
    p.add_argument("--by", metavar="FIELDS", help="comma list of fields, e.g. group,mke,action; also hour, day, month, category")
    filters(p)
    out = p.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true")
    out.add_argument("--csv", action="store_true")
    p.set_defaults(func=cmd_stats, log=None)

    p = sub.add_parser("verify", help="check the log's seals",
                       description="Check the seal chain; exit 1 naming the first break. Lines after "
                       "the last seal, and a torn last line (a write cut short), are reported, "
                       "not breaks.")  # fmt: skip
    p.add_argument("logs", nargs="*", metavar="LOG", help="log base paths or files")
    p.add_argument("-c", "--config", metavar="FILE", help="take the log path from this config")
    p.add_argument("--key-file", metavar="F", help="the HMAC key the log was sealed with")
    p.set_defaults(func=cmd_verify, log=None)

    p = sub.add_parser("replay", help="re-decide logged traffic under a policy",
                       description="Re-decide logged traffic under the policy in FILE and count what would change.")  # fmt: skip
    p.add_argument("-c", "--config", required=True, metavar="FILE")
    p.add_argument("logs", nargs="+", metavar="LOG", help="log base paths or files")
    p.add_argument("--since", metavar="T", help="from this time on: RFC 3339, a date, or an age (2h, 7d)")
    p.add_argument("--until", metavar="T", help="before this time")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_replay, action=None, agency=None, group=None, mke=None, rule=None, dir=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UserError, LogFileError, BadLogLine) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        # A file the user named, or one of its log's, that cannot be opened or read
        # (permissions, a directory): say which, without a traceback.
        _fail(f"{exc.filename}: {exc.strerror}" if exc.filename else str(exc))
