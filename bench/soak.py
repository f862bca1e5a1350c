"""Reconciliation soak (issue 5): a million mixed messages, malformed ones included,
through a real `stategate run` process on loopback, with responses flowing back.

Afterwards it reconciles three records of the run against each other:

* the upstream (a simulated switch) received exactly the allowed messages, byte for
  byte, in order, per connection (compared by a SHA-256 of each connection's frames);
* each client received exactly one ER per denied `in` message, addressed to the
  requester, in the order of the denials;
* the log holds exactly one line per message (each client's messages and each
  response), with `seq` running 1, 2, 3 ... with no gap, and `stategate verify` passes.

It prints messages, seconds, lines and mismatches; mismatches must be 0 (exit 1 if not).

    python bench/soak.py --messages 1000000 --connections 8
"""

from __future__ import annotations

import argparse
import hashlib
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine  # noqa: E402

from proxy._decode import decode  # noqa: E402
from proxy._demo import EXAMPLE_POLICY  # noqa: E402
from proxy._framing import frame, make_framer  # noqa: E402
from proxy._switch import SimulatedSwitch  # noqa: E402
from proxy._traffic import TrafficGenerator  # noqa: E402


class LogLine(msgspec.Struct):
    seq: int | None = None
    seal: int | None = None
    conn: int | None = None
    peer: str | None = None
    dir: str | None = None
    ori: str | None = None
    ctl: str | None = None
    action: str | None = None
    forwarded: bool | None = None
    bytes: int | None = None


class ClientRun:
    def __init__(self, payloads: list[bytes]) -> None:
        self.payloads = payloads
        self.peer = ""
        self.ers: list[tuple[str, str | None]] = []  # (requester, ctl) of each ER
        self.responses = 0
        self.sent_all = False


def is_er(payload: bytes) -> bool:
    """Cheap pre-check for an ER in any of the three formats (confirmed by decoding)."""
    return payload.startswith(b"ER.") or b'"mke":"ER"' in payload or b">ER</" in payload


async def run_client(port: int, run: ClientRun, rng: random.Random, done: trio.Event) -> None:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    host, cport = stream.socket.getsockname()[:2]
    run.peer = f"{host}:{cport}"
    framer = make_framer("len32", 1 << 24, b"")

    async def send() -> None:
        pos = 0
        while pos < len(run.payloads):
            k = rng.randint(1, 400)
            await stream.send_all(b"".join(frame(p, "len32") for p in run.payloads[pos : pos + k]))
            pos += k

    async def receive() -> None:
        while True:
            data = await stream.receive_some(1 << 16)
            if not data:
                return
            for ev in framer.feed(data):
                if ev[0] != "frame":
                    continue
                if is_er(ev[1]) and (msg := decode(ev[1])).mke == "ER":
                    run.ers.append((msg.dst[0], msg.ctl))
                else:
                    run.responses += 1

    async with stream:
        async with trio.open_nursery() as n:
            n.start_soon(receive)
            await send()
            run.sent_all = True
            await done.wait()  # the bench says when everything has come back
            n.cancel_scope.cancel()


async def soak(args: argparse.Namespace, workdir: Path) -> int:
    per = args.messages // args.connections
    print(f"generating {per * args.connections:,} messages ...", flush=True)
    runs = []
    for i in range(args.connections):
        gen = TrafficGenerator(1000 + i, dhs_share=0.05, malformed_share=0.01)
        runs.append(ClientRun([q.payload for q in gen.queries(per)]))
    total_in = sum(len(r.payloads) for r in runs)

    switch = SimulatedSwitch(keep_frames=False)
    log_path = workdir / "soak.jsonl"
    async with trio.open_nursery() as nursery:
        up_port = await nursery.start(switch.run)
        with socket_port() as listen:
            pass
        config = workdir / "soak.toml"
        policy = Path(EXAMPLE_POLICY).read_text().split("[policy]", 1)[1]
        config.write_text(
            f'[proxy]\nlisten = "127.0.0.1:{listen}"\nupstream = "127.0.0.1:{up_port}"\n'
            f'max_connections = {args.connections + 4}\n'
            f'[log]\npath = "{log_path}"\nrotate_bytes = {1 << 40}\n[admin]\nlisten = "127.0.0.1:0"\n[policy]' + policy
        )
        proc = await trio.lowlevel.open_process([sys.executable, "-m", "proxy", "run", "-c", str(config)],
                                                stderr=subprocess.DEVNULL)  # fmt: skip
        try:
            await wait_listening(listen)
            done = trio.Event()
            start = time.perf_counter()
            async with trio.open_nursery() as clients:
                for i, r in enumerate(runs):
                    clients.start_soon(run_client, listen, r, random.Random(i), done)
                # Done when every client has sent all and the log has stopped growing.
                last, last_change = -1, time.perf_counter()
                while True:
                    await trio.sleep(0.2)
                    size = log_path.stat().st_size if log_path.exists() else 0
                    now = time.perf_counter()
                    if size != last:
                        last, last_change = size, now
                    elif all(r.sent_all for r in runs) and now - last_change >= 2:
                        break
                    got = sum(r.responses + len(r.ers) for r in runs)
                    print(f"\r  switch has {switch.frames_received:,} frames, clients {got:,} replies",
                          end="", flush=True)
                elapsed = last_change - start
                done.set()
            print()
        finally:
            proc.terminate()
            await proc.wait()
        nursery.cancel_scope.cancel()

    # ---------------------------------------------------------------- reconcile
    mismatches = 0

    def mismatch(what: str) -> None:
        nonlocal mismatches
        mismatches += 1
        print(f"  MISMATCH: {what}")

    decoder = msgspec.json.Decoder(LogLine)
    by_peer: dict[str, list[LogLine]] = {}
    out_lines = lines = 0
    expected_seq = 1
    with open(log_path, "rb") as f:
        for raw in f:
            rec = decoder.decode(raw)
            if rec.seal is not None:
                continue
            lines += 1
            if rec.seq != expected_seq:
                mismatch(f"seq {rec.seq} where {expected_seq} was next")
                expected_seq = rec.seq or expected_seq
            expected_seq += 1
            if rec.dir == "out":
                out_lines += 1
            else:
                by_peer.setdefault(rec.peer or "", []).append(rec)

    expected_digests = []
    for r in runs:
        recs = by_peer.get(r.peer, [])
        if [x.bytes for x in recs] != [len(p) for p in r.payloads]:
            mismatch(f"client {r.peer}: {len(recs)} in-lines for {len(r.payloads)} messages")
            continue
        h = hashlib.sha256()
        for p, rec in zip(r.payloads, recs):
            if rec.forwarded:
                h.update(frame(p, "len32"))
        expected_digests.append(h.hexdigest())
        denied = [(x.ori, x.ctl) for x in recs if x.action == "deny"]
        if r.ers != denied:
            mismatch(f"client {r.peer}: {len(r.ers)} ERs for {len(denied)} denials (or out of order)")
    # (wait_listening's probe connection carried nothing: its digest is the empty one)
    empty = hashlib.sha256().hexdigest()
    got_digests = sorted(d.hexdigest() for d in switch.digests if d.hexdigest() != empty)
    if sorted(d for d in expected_digests if d != empty) != got_digests:
        mismatch("the upstream's per-connection streams differ from the allowed messages")
    if out_lines != switch.responses_sent:
        mismatch(f"{out_lines} out-lines for {switch.responses_sent} responses")
    responses_back = sum(r.responses for r in runs)
    if responses_back > switch.responses_sent:
        mismatch("clients received more responses than the switch sent")
    verified = subprocess.run([sys.executable, "-m", "proxy", "verify", str(log_path)], capture_output=True)
    if verified.returncode != 0 or b"unsealed" in verified.stdout:
        mismatch(f"verify: {verified.stdout.decode().strip()} {verified.stderr.decode().strip()}")

    denials = sum(len(r.ers) for r in runs)
    print(f"machine: {machine()}")
    print(f"messages in: {total_in:,}  responses out: {switch.responses_sent:,}  "
          f"forwarded upstream: {switch.frames_received:,}  ERs: {denials:,}")  # fmt: skip
    print(f"seconds: {elapsed:.1f}  ({(total_in + switch.responses_sent) / elapsed:,.0f} messages/s through the proxy)")
    print(f"log lines: {lines:,} (expected {total_in + switch.responses_sent:,})")
    if lines != total_in + switch.responses_sent:
        mismatch("log line count")
    print(f"mismatches: {mismatches}")
    return 1 if mismatches else 0


class socket_port:
    """A free loopback port (closed again before the proxy binds it)."""

    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return self.sock.getsockname()[1]

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


async def wait_listening(port: int) -> None:
    with trio.fail_after(30):
        while True:
            try:
                s = await trio.open_tcp_stream("127.0.0.1", port)
            except OSError:
                await trio.sleep(0.05)
                continue
            await s.aclose()
            return


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=1_000_000)
    ap.add_argument("--connections", type=int, default=8)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        return trio.run(soak, args, Path(tmp))


if __name__ == "__main__":
    sys.exit(main())
