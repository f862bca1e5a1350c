"""End to end: `stategate run` with every decision logged, between a load generator and
a simulated switch, each its own process on loopback, beside a plain TCP relay on the
same traffic as the baseline (HAProxy in TCP mode where installed), and a minimal trio
relay (stategate's I/O layer doing none of its work), all in one run.

    python bench/e2e.py                       # the full run (about six minutes)
    python bench/e2e.py --seconds 2 --rates 1000 --latency-seconds 2   # a smoke run
    python bench/e2e.py --rss-minutes 10      # and RSS sampled over ten minutes
    python bench/e2e.py --runs 0 --rates 10000 --latency-runs 5   # latency only
    python bench/e2e.py --latency-runs 0      # throughput only
    python bench/e2e.py --pin                 # the paths on one CPU, the harness on the rest

It reports, for each path (direct to the switch, HAProxy, the trio relay, stategate):

* sustained throughput: queries a second from `--connections` connections sending as
  fast as the path takes them (backpressure, no loss), with the responses flowing back;
  the time runs until the last response has arrived; for stategate also the messages
  it decided and logged a second, both directions (queries in, the switch's responses
  out), counted exactly from the log's `seq`, and its CPU time (user plus system, from
  /proc) per message decided, which bounds what one core can carry whatever else
  shares the machine;
* round-trip latency at fixed offered rates (`--rates`, default 1k, 10k, 100k queries
  a second; each query sent at its time, and one that the load generator, stalled
  itself, would send more than `--late-ms` late skipped and counted rather than sent in
  a burst), `--latency-runs` runs each, interleaved: the median p50, p99, p99.9, and
  the latency stategate adds, the median over runs of its percentile minus the direct
  path's in the same run, and likewise over the trio relay's (what its work adds to
  trio's own), and the share of CPU time the hypervisor stole in each path's worst
  run (/proc/stat): time a ready process here waited for a real CPU, one part of a
  virtual machine's latency tail that no path under test controls; and with each
  path, the CPU a query of the harness itself (the load generator over its sending,
  the switch) and the share of the machine's CPUs that it and the path (where its
  CPU is read: HAProxy, the trio relay, stategate) took at that rate: on a small
  machine the harness shares the CPUs with the path under test, and a latency tail
  is made of wake-ups that find the CPUs busy;
* serial round trips (`--serial` of them, one query in flight): the round trip, and the
  CPU time stategate and the trio relay spend on each (two chunks of one message), the
  fixed cost per chunk that latency at low rates is made of;
* stategate's peak RSS (VmHWM) after each phase, and RSS sampled over `--rss-minutes`.

The switch answers from a table built from the same seed as the load, so it never
decodes: neither it nor the load generator is what limits the baseline.  The latency
traffic is all allowed and answered, one response per query, so responses match
queries in order.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import cpu_jiffies, print_machine, steal_share  # noqa: E402

from proxy._framing import frame  # noqa: E402

HERE = Path(__file__).resolve()
HAPROXY = "haproxy (tcp mode)"
TRIO_RELAY = "trio relay"

#: ``--pin``: the CPUs the paths under test run on, and those of the harness (the
#: switch, the load generator, this orchestrator); empty: the scheduler's choice.
PATH_CPUS: set[int] = set()
HARNESS_CPUS: set[int] = set()


def _pinned(cpus: set[int]) -> Callable[[], None] | None:
    """A ``preexec_fn`` that confines the child (and the threads it starts) to ``cpus``."""
    return (lambda: os.sched_setaffinity(0, cpus)) if cpus else None


# ------------------------------------------------------------------- traffic


def build_pool(seed: int, size: int, answered_only: bool) -> list[tuple[bytes, bytes | None]]:
    """(query payload, response payload or None) pairs.  ``answered_only``: only queries
    the example policy allows whose response it lets back (for latency)."""
    import random

    from proxy._config import load_config
    from proxy._decode import decode
    from proxy._demo import EXAMPLE_POLICY
    from proxy._policy import compile_policy, decide
    from proxy._traffic import TrafficGenerator, response_for

    policy = compile_policy(load_config(EXAMPLE_POLICY))
    gen = TrafficGenerator(seed, policy.state, dhs_share=0.0 if answered_only else 0.05,
                           malformed_share=0.0 if answered_only else 0.01)  # fmt: skip
    rng = random.Random(seed)
    pool: list[tuple[bytes, bytes | None]] = []
    seen: set[bytes] = set()
    while len(pool) < size:
        q = gen.query()
        if q.payload in seen:
            continue
        resp = None
        if not q.malformed:
            msg = decode(q.payload)
            resp = response_for(msg.fmt, msg.mke, msg.ori, msg.ctl, policy.local_ori, rng, msg.imq)
            if answered_only:
                if resp is None or decide(policy, msg, "in").action != "allow":
                    continue
                if decide(policy, decode(resp), "out").action != "allow":
                    continue
        seen.add(q.payload)
        pool.append((q.payload, resp))
    return pool


def len32(payload: bytes) -> bytes:
    return frame(payload, "len32")


class Len32Splitter:
    """Whole len32 payloads out of a byte stream, for the load generator and the
    switch: the bare minimum, so that neither is what a run measures."""

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf + data
        out = []
        pos, end = 0, len(buf)
        while end - pos >= 4:
            size = int.from_bytes(buf[pos : pos + 4], "big")
            if end - pos - 4 < size:
                break
            out.append(buf[pos + 4 : pos + 4 + size])
            pos += 4 + size
        self.buf = buf[pos:]
        return out


# -------------------------------------------------------------------- roles


def role_switch(args: argparse.Namespace) -> None:
    """Answer each query from the table, in order, per connection (threads)."""
    table = {}
    for pool_args in ((args.seed, args.pool, False), (args.seed + 1, args.pool, True)):
        for q, r in build_pool(*pool_args):
            table[q] = len32(r) if r is not None else b""
    srv = socket.create_server(("127.0.0.1", 0), backlog=128)
    print(srv.getsockname()[1], flush=True)

    def serve(conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        splitter = Len32Splitter()
        lookup = table.get
        with conn:
            while True:
                try:  # a path may reset its connection when a run ends (HAProxy does)
                    data = conn.recv(1 << 18)
                    if not data:
                        return
                    out = [lookup(q, b"") for q in splitter.feed(data)]
                    if out:
                        conn.sendall(b"".join(out))
                except OSError:
                    return

    while True:
        conn, _ = srv.accept()
        threading.Thread(target=serve, args=(conn,), daemon=True).start()


def role_load(args: argparse.Namespace) -> None:
    """Drive one path; print the result as JSON."""
    if args.trips:
        pool = [len32(q) for q, _ in build_pool(args.seed + 1, args.pool, True)]
        print(json.dumps(serial_run(args.port, pool, args.trips)), flush=True)
    elif args.rate:
        pool = [len32(q) for q, _ in build_pool(args.seed + 1, args.pool, True)]
        print(json.dumps(latency_run(args.port, pool, args.rate, args.seconds, args.late_ms)), flush=True)
    else:
        pool = [len32(q) for q, _ in build_pool(args.seed, args.pool, False)]
        print(json.dumps(throughput_run(args.port, pool, args.connections, args.seconds)), flush=True)


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def throughput_run(port: int, pool: list[bytes], connections: int, seconds: float) -> dict:
    per_chunk = 200
    chunks = [(b"".join(pool[i : i + per_chunk]), len(pool[i : i + per_chunk]))
              for i in range(0, len(pool), per_chunk)]  # fmt: skip
    sent = [0] * connections
    received = [0] * connections
    last_rx = [0.0] * connections
    socks = [_connect(port) for _ in range(connections)]
    start = time.perf_counter()
    stop_at = start + seconds

    def sender(i: int) -> None:
        s, k = socks[i], i
        while time.perf_counter() < stop_at:
            data, count = chunks[k % len(chunks)]
            s.sendall(data)
            sent[i] += count
            k += 1

    def receiver(i: int) -> None:
        s, fc = socks[i], Len32Splitter()
        s.settimeout(2.0)  # quiet for 2 s after the senders stopped: done
        while True:
            try:
                data = s.recv(1 << 18)
            except TimeoutError:
                if time.perf_counter() > stop_at:
                    return
                continue
            if not data:
                return
            received[i] += len(fc.feed(data))
            last_rx[i] = time.perf_counter()

    threads = [threading.Thread(target=f, args=(i,)) for i in range(connections) for f in (sender, receiver)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    end = max(max(last_rx), stop_at)
    for s in socks:
        s.close()
    total_sent = sum(sent)
    return {"queries": total_sent, "replies": sum(received), "seconds": end - start,
            "queries_per_s": total_sent / (end - start)}  # fmt: skip


#: Milliseconds a query may be behind its time and still be sent (``--late-ms``).
LATE_MS = 1.0


def due_queries(elapsed: float, rate: int, next_slot: int, total: int, late: float) -> tuple[int, int]:
    """The queries to send ``elapsed`` seconds into a run at ``rate`` a second, where
    query ``i`` is due at ``i / rate`` and ``next_slot`` is the first not yet sent or
    skipped: ``(first, end)``, send ``first`` to ``end - 1`` now and skip those from
    ``next_slot`` to ``first - 1``, which fell due more than ``late`` seconds ago.

    A load generator that stalls (its CPU taken by the hypervisor, by the path under
    test or by the switch) and then sends everything it owes in one write offers a
    burst, not a fixed rate: after a 15 ms stall at 10,000 a second, 150 queries in one
    chunk, whose round trips all carry the burst, where a 4-second run's slowest 1% is
    400 queries (bench/README.md, "2026-12-03, morning").  So what is more than
    ``late`` behind is skipped and counted, as a constant-arrival-rate load tool drops
    the iterations it could not start on time; ``late = inf`` sends it all, in the burst,
    as this generator did before.  Round trips are timed from each query's actual send
    either way.
    """
    end = min(total, int(elapsed * rate) + 1)
    if late == math.inf:
        return next_slot, end
    return max(next_slot, min(end, math.ceil((elapsed - late) * rate))), end


def latency_run(port: int, pool: list[bytes], rate: int, seconds: float, late_ms: float = LATE_MS) -> dict:
    """Offer ``rate`` queries a second on one connection, each query sent at its time
    (those more than ``late_ms`` behind it are skipped: ``due_queries``); every query
    has one response, in order, so each response's round trip is known."""
    s = _connect(port)
    sent_at: deque[float] = deque()
    rtts: list[float] = []
    total = int(rate * seconds)
    late = late_ms / 1000
    skipped = 0  # final before the last query is sent, so before its response comes
    done = threading.Event()

    def receiver() -> None:
        fc = Len32Splitter()
        s.settimeout(10)
        got = 0
        try:
            while got + skipped < total:
                data = s.recv(1 << 18)
                if not data:
                    break
                now = time.perf_counter()
                for _ in fc.feed(data):
                    rtts.append(now - sent_at.popleft())
                    got += 1
        except TimeoutError:
            pass
        done.set()

    t = threading.Thread(target=receiver)
    t.start()
    start = time.perf_counter()
    cpu0 = time.process_time()  # the sending's, not the start-up's
    tick = 0.001
    k = slot = sent = 0
    while slot < total:
        target = start + (slot / rate)
        now = time.perf_counter()
        if now < target:
            time.sleep(min(tick, target - now))
            continue
        first, end = due_queries(now - start, rate, slot, total, late)
        skipped += first - slot
        batch = []
        for _ in range(end - first):
            batch.append(pool[k % len(pool)])
            k += 1
        stamp = time.perf_counter()
        sent_at.extend([stamp] * (end - first))
        s.sendall(b"".join(batch))
        sent += end - first
        slot = end
    done.wait(30)
    t.join(1)
    cpu = time.process_time() - cpu0
    s.close()
    rtts.sort()
    elapsed = time.perf_counter() - start

    def pct(p: float) -> float:
        return rtts[min(len(rtts) - 1, int(p * len(rtts)))] * 1e6 if rtts else float("nan")

    return {"rate": rate, "sent": sent, "skipped": skipped, "answered": len(rtts), "seconds": elapsed,
            "p50_us": pct(0.50), "p99_us": pct(0.99), "p999_us": pct(0.999),
            "load_cpu_us_per_query": cpu / sent * 1e6 if sent else 0.0}  # fmt: skip


def serial_run(port: int, pool: list[bytes], n: int) -> dict:
    """``n`` round trips one at a time on one connection: each query waits for its
    response, so every chunk a relay handles is one message, and its cost per chunk
    shows unblurred by batching."""
    s = _connect(port)
    fc = Len32Splitter()
    rtts = []
    for i in range(n):
        t = time.perf_counter()
        s.sendall(pool[i % len(pool)])
        while True:
            data = s.recv(1 << 16)
            if not data:
                raise ConnectionError("the path closed the connection mid round trip")
            if fc.feed(data):
                break
        rtts.append(time.perf_counter() - t)
    s.close()
    rtts.sort()
    return {"round_trips": n, "p50_us": rtts[n // 2] * 1e6, "p99_us": rtts[int(n * 0.99)] * 1e6}


# -------------------------------------------------------------- orchestration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, what: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{what} exited at start ({proc.returncode})")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"{what} did not listen on {port}")


def start_haproxy(switch_port: int, workdir: Path) -> tuple[subprocess.Popen, int] | None:
    """HAProxy in TCP mode in front of the switch, where it is installed."""
    haproxy = shutil.which("haproxy")
    if not haproxy:
        return None
    port = free_port()
    cfg = workdir / "haproxy.cfg"
    cfg.write_text(
        "global\n  maxconn 1000\n"
        "defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n"
        f"frontend f\n  bind 127.0.0.1:{port}\n  default_backend b\n"
        f"backend b\n  server s1 127.0.0.1:{switch_port}\n"
    )
    proc = subprocess.Popen([haproxy, "-f", str(cfg), "-db"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=_pinned(PATH_CPUS))  # fmt: skip
    wait_port(port, proc, HAPROXY)
    return proc, port


def start_trio_relay(switch_port: int) -> tuple[subprocess.Popen, int]:
    """bench/_relay.py: stategate's I/O layer (trio, one upstream connection per
    client) with none of its work, so a run shows what trio itself costs."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE.parent / "_relay.py"), str(port), str(switch_port)],
                            preexec_fn=_pinned(PATH_CPUS))  # fmt: skip
    wait_port(port, proc, TRIO_RELAY)
    return proc, port


def start_stategate(switch_port: int, workdir: Path, tree: Path | None = None, admin_port: int = 0,
                    program: list[str] | None = None, log: str = "") -> tuple[subprocess.Popen, int]:  # fmt: skip
    """``stategate run`` logging into workdir; from the source tree ``tree`` (its
    extensions built in place) instead of the installed package, if given; its admin
    endpoint on ``admin_port`` (0: any); ``program`` instead of ``python -m proxy``
    (``bench/_unsealed.py``); ``log``, TOML lines added to its ``[log]`` table."""
    from proxy._demo import EXAMPLE_POLICY

    port = free_port()
    policy = Path(EXAMPLE_POLICY).read_text().split("[policy]", 1)[1]
    config = workdir / "e2e.toml"
    config.write_text(
        f'[proxy]\nlisten = "127.0.0.1:{port}"\nupstream = "127.0.0.1:{switch_port}"\n'
        f'[log]\npath = "{workdir}/decisions.jsonl"\n{log}'  # seals with fsync: the defaults
        f'[admin]\nlisten = "127.0.0.1:{admin_port}"\n[policy]' + policy
    )
    env = None if tree is None else {**os.environ, "PYTHONPATH": str(tree)}
    proc = subprocess.Popen([*(program or [sys.executable, "-m", "proxy"]), "run", "-c", str(config)],
                            stderr=subprocess.DEVNULL, cwd=tree, env=env,
                            preexec_fn=_pinned(PATH_CPUS))  # fmt: skip
    wait_port(port, proc, "stategate")
    return proc, port


#: The bounds, in seconds, of stategate's own chunk times that a latency run reports.
CHUNK_BOUNDS = ("0.00025", "0.0005")


def chunk_times(admin_port: int) -> dict[str, float]:
    """stategate's histogram of a chunk's time in the proxy, from its arrival to its
    decisions logged and its messages forwarded (``stategate_decision_latency_seconds``
    on /metrics): the count at or under each bucket bound, ``+Inf`` the total."""
    url = f"http://127.0.0.1:{admin_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        body = response.read().decode()
    prefix = 'stategate_decision_latency_seconds_bucket{le="'
    return {line[len(prefix):].split('"', 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in body.splitlines() if line.startswith(prefix)}  # fmt: skip


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """A memory figure of a running process in KiB (0 once it has exited)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0
    for line in status.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def logged_seq(workdir: Path) -> int:
    """The last ``seq`` stategate has logged: the count of its decisions so far."""
    from proxy._log import last_seq
    from proxy._logfiles import LogFileError, log_files

    try:
        files = log_files(workdir / "decisions.jsonl")
    except LogFileError:
        return 0
    for path in reversed(files):  # the base file may be fresh from a rotation
        if seq := last_seq(path):
            return seq
    return 0


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat's fields after the command name (field 3 of stat(5) first)."""
    return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a running process, in seconds."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def minor_faults(pid: int) -> int:
    """A running process's minor page faults so far."""
    return int(_stat_fields(pid)[7])


def stategate_throughput(args: argparse.Namespace, port: int, pid: int, workdir: Path) -> dict:
    """A throughput run through stategate (process ``pid``, logging into workdir): the
    load's result, and the messages the proxy decided in it, counted from the log's
    ``seq`` (every response has arrived, so every decision is logged), with its CPU
    seconds and minor page faults over the run."""
    cpu0, seq0, faults0 = cpu_seconds(pid), logged_seq(workdir), minor_faults(pid)
    r = load(args, port, connections=args.connections, seconds=args.seconds)
    return {**r, "decided": logged_seq(workdir) - seq0, "cpu_seconds": cpu_seconds(pid) - cpu0,
            "faults": minor_faults(pid) - faults0}  # fmt: skip


def load(args: argparse.Namespace, port: int, **kw: object) -> dict:
    cmd = [sys.executable, str(HERE), "--role", "load", "--port", str(port), "--seed", str(args.seed),
           "--pool", str(args.pool), "--late-ms", str(getattr(args, "late_ms", LATE_MS))]  # fmt: skip
    for k, v in kw.items():
        cmd += [f"--{k}", str(v)]
    seconds = float(kw.get("seconds", args.seconds))
    out = subprocess.run(cmd, capture_output=True, check=True, timeout=seconds + 300,
                         preexec_fn=_pinned(HARNESS_CPUS)).stdout  # fmt: skip
    return json.loads(out.decode().strip().splitlines()[-1])


def orchestrate(args: argparse.Namespace) -> int:
    print_machine(latency=True)
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            raise SystemExit("--pin needs at least two CPUs")
        PATH_CPUS.add(cpus[-1])
        HARNESS_CPUS.update(cpus[:-1])
        os.sched_setaffinity(0, HARNESS_CPUS)
        print(f"pinned: the paths under test on CPU {cpus[-1]}, the switch, load generator and "
              f"orchestrator on CPU {', '.join(map(str, cpus[:-1]))}")
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        switch = subprocess.Popen([sys.executable, str(HERE), "--role", "switch", "--seed", str(args.seed),
                                   "--pool", str(args.pool)], stdout=subprocess.PIPE,
                                  preexec_fn=_pinned(HARNESS_CPUS))  # fmt: skip
        procs = [switch]
        try:
            switch_port = int(switch.stdout.readline())
            paths = {"direct": switch_port}
            haproxy = start_haproxy(switch_port, workdir)
            if haproxy is not None:
                procs.append(haproxy[0])
                paths[HAPROXY] = haproxy[1]
            relay, paths[TRIO_RELAY] = start_trio_relay(switch_port)
            procs.append(relay)
            base_name = HAPROXY if haproxy is not None else TRIO_RELAY
            admin_port = free_port()
            sg, sg_port = start_stategate(switch_port, workdir, admin_port=admin_port)
            pids = {"stategate": sg.pid, TRIO_RELAY: relay.pid}
            if haproxy is not None:
                pids[HAPROXY] = haproxy[0].pid
            procs.append(sg)
            paths["stategate"] = sg_port
            print(f"paths: {', '.join(paths)}; stategate logs every decision (sealed; fsync after seals, "
                  f"in the background); baseline: {base_name}")  # fmt: skip

            if args.runs:  # --runs 0: latency (and what follows) only
                print(f"\nthroughput, {args.connections} connections, {args.seconds:g} s of sending, "
                      "median of the runs:")  # fmt: skip
                results: dict[str, list[dict]] = {name: [] for name in paths}
                cpu_per_message: list[float] = []
                decided_per_s: list[float] = []
                for _ in range(args.runs):
                    for name, port in paths.items():  # interleaved, so noise hits all alike
                        if name == "stategate":
                            r = stategate_throughput(args, port, sg.pid, workdir)
                            cpu_per_message.append(r["cpu_seconds"] / r["decided"])
                            decided_per_s.append(r["decided"] / r["seconds"])
                        else:
                            r = load(args, port, connections=args.connections, seconds=args.seconds)
                        results[name].append(r)
                med = {n: statistics.median(r["queries_per_s"] for r in rs) for n, rs in results.items()}
                for name, rs in results.items():
                    runs = ", ".join(f"{r['queries_per_s']:,.0f}" for r in rs)
                    print(f"  {name:<36}{med[name]:>12,.0f} queries/s  (runs: {runs}; "
                          f"replies in last run {rs[-1]['replies']:,})")
                print(f"  stategate / baseline: {med['stategate'] / med[base_name]:.3f}"
                      + (f"  (stategate / trio relay: {med['stategate'] / med[TRIO_RELAY]:.3f})"
                         if base_name != TRIO_RELAY else ""))  # fmt: skip
                runs = ", ".join(f"{x:,.0f}" for x in decided_per_s)
                print(f"  stategate messages decided and logged (queries in, responses out; from the log's seq): "
                      f"{statistics.median(decided_per_s):,.0f}/s  (runs: {runs})")
                us = statistics.median(cpu_per_message) * 1e6
                print(f"  stategate CPU per message decided (user+system): {us:.2f} us, "
                      f"so {1e6 / us:,.0f} messages/s on one core at most")
                print(f"  stategate peak RSS after throughput: {rss_kib(sg.pid) / 1024:.1f} MiB")

            rates = args.rates if args.latency_runs else []  # --latency-runs 0: none
            if rates:
                print("\nlatency (round trip, microseconds) at fixed offered rates, one connection, "
                      f"median of {args.latency_runs} run(s); added: the median of each run's difference:")
                print(f"  {'rate/s':>8}  {'path':<36}{'p50':>9}{'p99':>9}{'p99.9':>9}  answered")
            keys = ("p50_us", "p99_us", "p999_us")
            for rate in rates:
                lat: dict[str, list[dict]] = {name: [] for name in paths}
                for _ in range(args.latency_runs):
                    for name, port in paths.items():  # interleaved
                        before = cpu_jiffies()
                        cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                        switch0 = cpu_seconds(switch.pid)
                        chunks0 = chunk_times(admin_port) if name == "stategate" else {}
                        r = load(args, port, rate=rate, seconds=args.latency_seconds)
                        r["steal"] = steal_share(before, cpu_jiffies())
                        r["switch_cpu_us_per_query"] = (cpu_seconds(switch.pid) - switch0) / r["sent"] * 1e6
                        if name in pids:
                            r["cpu_us_per_query"] = (cpu_seconds(pids[name]) - cpu0) / r["sent"] * 1e6
                        if name == "stategate":
                            chunks = {k: v - chunks0.get(k, 0.0) for k, v in chunk_times(admin_port).items()}
                            r["chunks"] = chunks["+Inf"]
                            for bound in CHUNK_BOUNDS:  # the share of chunks over each bound
                                r[bound] = 1 - chunks[bound] / chunks["+Inf"] if chunks["+Inf"] else 0.0
                        lat[name].append(r)
                for name, rs in lat.items():
                    p50, p99, p999 = (statistics.median(r[k] for r in rs) for k in keys)
                    answered = f"{sum(r['answered'] for r in rs):,}/{sum(r['sent'] for r in rs):,}"
                    print(f"  {rate:>8,}  {name:<36}{p50:>9.0f}{p99:>9.0f}{p999:>9.0f}  {answered}")
                for over, label in (("direct", "added by stategate"), (TRIO_RELAY, "added over the trio relay")):
                    added = [statistics.median(s[k] - d[k] for s, d in zip(lat["stategate"], lat[over]))
                             for k in keys]  # fmt: skip
                    print(f"  {rate:>8,}  {label:<36}" + "".join(f"{x:>9.0f}" for x in added))
                skipped = ", ".join(f"{name} {100 * sum(r['skipped'] for r in rs) / sum(r['sent'] + r['skipped'] for r in rs):.2f}%"
                                    for name, rs in lat.items())  # fmt: skip
                print(f"  {rate:>8,}  queries skipped, the load generator itself over {args.late_ms:g} ms late "
                      f"(--late-ms): {skipped}")  # fmt: skip
                steal = ", ".join(f"{name} {100 * max(r['steal'] for r in rs):.1f}%" for name, rs in lat.items())
                print(f"  {rate:>8,}  CPU time stolen by the hypervisor, worst run of each path: {steal}")
                cpu = ", ".join(f"{name} {statistics.median(r['cpu_us_per_query'] for r in lat[name]):.1f} us"
                                for name in pids)  # fmt: skip
                print(f"  {rate:>8,}  CPU a query (median): {cpu}")
                harness = []
                for name, rs in lat.items():
                    load_us, switch_us = (statistics.median(r[k] for r in rs)
                                          for k in ("load_cpu_us_per_query", "switch_cpu_us_per_query"))  # fmt: skip
                    path_us = statistics.median(r["cpu_us_per_query"] for r in rs) if name in pids else 0.0
                    share = (load_us + switch_us + path_us) * rate / 1e6 / (os.cpu_count() or 1)
                    harness.append(f"{name} {load_us:.1f} + {switch_us:.1f} us ({100 * share:.0f}%)")
                print(f"  {rate:>8,}  the harness's CPU a query, load generator (sending) + switch, and (the "
                      f"share of the machine's {os.cpu_count()} CPUs it and the path took): {', '.join(harness)}")
                sg_runs = lat["stategate"]
                over = ", ".join(f"over {float(b) * 1e6:.0f} us {100 * min(r[b] for r in sg_runs):.2f} to "
                                 f"{100 * max(r[b] for r in sg_runs):.2f}%" for b in CHUNK_BOUNDS)  # fmt: skip
                print(f"  {rate:>8,}  stategate's own time a chunk (its /metrics; {sum(r['chunks'] for r in sg_runs):,.0f} "
                      f"chunks), runs' range: {over}")  # fmt: skip
                print(f"  stategate peak RSS so far: {rss_kib(sg.pid) / 1024:.1f} MiB")

            if args.serial and args.latency_runs:
                print(f"\nserial round trips (one query in flight, one connection), {args.serial:,} a run, "
                      f"median of {args.latency_runs} run(s): the relays' CPU per round trip (two chunks "
                      "of one message each), round trip p50 and p99 in microseconds:")  # fmt: skip
                serial: dict[str, list[tuple[dict, float | None]]] = {name: [] for name in paths}
                for _ in range(args.latency_runs):
                    for name, port in paths.items():
                        cpu0 = cpu_seconds(pids[name]) if name in pids else 0.0
                        r = load(args, port, trips=args.serial)
                        cpu = (cpu_seconds(pids[name]) - cpu0) / args.serial if name in pids else None
                        serial[name].append((r, cpu))
                for name, rs in serial.items():
                    cpu_us = (f"{statistics.median(c for _, c in rs) * 1e6:>8.0f} us CPU"
                              if rs[0][1] is not None else " " * 15)  # fmt: skip
                    p50, p99 = (statistics.median(r[k] for r, _ in rs) for k in ("p50_us", "p99_us"))
                    print(f"  {name:<36}{cpu_us}{p50:>9.0f}{p99:>9.0f}")

            if args.rss_minutes:
                print(f"\nRSS over {args.rss_minutes:g} minutes at {args.rss_rate:,} queries/s:")
                samples: list[tuple[float, int]] = []
                done = threading.Event()

                def sample() -> None:
                    t0 = time.monotonic()
                    while not done.wait(10):
                        samples.append((time.monotonic() - t0, rss_kib(sg.pid, "VmRSS")))

                th = threading.Thread(target=sample, daemon=True)
                th.start()
                load(args, sg_port, rate=args.rss_rate, seconds=args.rss_minutes * 60)
                done.set()
                th.join()
                for t, kib in samples[:: max(1, len(samples) // 12)]:
                    print(f"  {t:6.0f} s  {kib / 1024:7.1f} MiB")
                print(f"  first {samples[0][1] / 1024:.1f} MiB, last {samples[-1][1] / 1024:.1f} MiB, "
                      f"peak {rss_kib(sg.pid) / 1024:.1f} MiB")
            print(f"\nstategate peak RSS (VmHWM): {rss_kib(sg.pid) / 1024:.1f} MiB")
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                try:
                    p.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    p.kill()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", choices=["orchestrate", "switch", "load"], default="orchestrate",
                    help=argparse.SUPPRESS)  # fmt: skip
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--pool", type=int, default=20_000, help="distinct queries in the load")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=8.0, help="sending time of each throughput run")
    ap.add_argument("--runs", type=int, default=3, help="throughput runs (0: none)")
    ap.add_argument("--rates", type=lambda s: [int(x) for x in s.split(",")], default=[1000, 10000, 100000])
    ap.add_argument("--latency-seconds", type=float, default=5.0)
    ap.add_argument("--latency-runs", type=int, default=3,
                    help="runs at each rate, and of the serial round trips (medians; 0: none of either)")
    ap.add_argument("--serial", type=int, default=2000, help="serial round trips a run (0: none)")
    ap.add_argument("--pin", action="store_true",
                    help="the paths under test on the last CPU, the harness on the others")
    ap.add_argument("--late-ms", type=float, default=LATE_MS,
                    help="at fixed rates, skip a query more than this many ms behind its time instead "
                         "of sending it in a burst (inf: send every query; default %(default)g)")  # fmt: skip
    ap.add_argument("--rss-minutes", type=float, default=0.0)
    ap.add_argument("--rss-rate", type=int, default=10000)
    ap.add_argument("--port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--rate", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--trips", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    for name in ("runs", "latency_runs", "serial"):
        if getattr(args, name) < 0:
            ap.error(f"--{name.replace('_', '-')} must be 0 or more")
    if args.role == "switch":
        role_switch(args)
        return 0
    if args.role == "load":
        role_load(args)
        return 0
    return orchestrate(args)


if __name__ == "__main__":
    sys.exit(main())
