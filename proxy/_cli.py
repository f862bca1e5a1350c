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


class UserError(Exception):
    """A mistake the user can fix; printed without a traceback."""


def _fail(message: str, status: int = 2) -> NoReturn:
    print(f"stategate: {message}", file=sys.stderr)
    raise SystemExit(status)


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

    print(describe_policy(config, policy, matcher=f"compiled ({Path(fast.__file__).name})"))
    return 0


def cmd_decide(args: argparse.Namespace) -> int:
    fast = compiled_matcher()
    config, policy = _load(args.config)
    import msgspec

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
    for rec in batch.records:
        sys.stdout.buffer.write(msgspec.json.encode(rec) + b"\n")
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
        trio.run(serve, config, args.config)
    except OSError as exc:
        raise UserError(f"cannot start: {exc.strerror or exc}") from None
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
    p.add_argument("--messages", type=int, default=3000, help="queries to send (default 3000)")
    p.add_argument("--connections", type=int, default=4, help="client connections (default 4)")
    p.add_argument("--seed", type=int, default=2026, help="traffic seed (default 2026)")
    p.add_argument("--framing", choices=("len32", "delimited"), default="len32")
    p.add_argument("--log", default="stategate-demo/decisions.jsonl", metavar="PATH",
                   help="decision log to write (replaced; default %(default)s)")  # fmt: skip
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, UserError) as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
