"""The admin endpoint: ``/metrics`` (Prometheus text format) and ``/healthz``.

Counters that change per message live where they are cheapest to keep (the engines'
shared decision counts, the proxy's and the log's own attributes); a collector turns
them into Prometheus metrics only when scraped.  The HTTP side is a deliberately tiny
trio server: GET of those two paths, nothing else, bounded in size and time.
"""

from __future__ import annotations

from bisect import bisect_left
from typing import TYPE_CHECKING

import trio
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

if TYPE_CHECKING:
    from ._server import Proxy

LATENCY_BUCKETS = (1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5)
MAX_REQUEST = 8192
REQUEST_TIMEOUT = 5.0


class BucketCounts:
    """A histogram kept as bare bucket counts, turned into Prometheus's cumulative
    buckets only when scraped.

    The proxy observes every chunk it decides, and ``prometheus_client.Histogram``
    takes a lock and walks its bounds in Python on each call, about 0.7 us: at 10k
    queries a second (two chunks each) that is a visible share of the proxy's own CPU
    (bench/README.md).  Here an observation is one ``bisect`` and two additions; the
    event loop's single thread is the only writer, so no lock is needed.
    """

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)  # the last: over every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound counts in that bound's bucket (le)
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def family(self, name: str, documentation: str) -> HistogramMetricFamily:
        counts, total = list(self.counts), self.sum  # one consistent reading
        buckets, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts):
            running += n
            buckets.append((floatToGoString(bound), running))
        family = HistogramMetricFamily(name, documentation)
        family.add_metric([], buckets, total)
        return family


class ProxyCollector(Collector):
    def __init__(self, proxy: Proxy) -> None:
        self.proxy = proxy

    def collect(self):
        p = self.proxy
        decisions = CounterMetricFamily("stategate_decisions", "Decisions made, by direction, action and rule",
                                        labels=["direction", "action", "rule"])  # fmt: skip
        rejects = CounterMetricFamily("stategate_rejects", "Rejected messages, by reason", labels=["reason"])
        by_reason: dict[str, int] = {}
        for (direction, action, rule), n in list(p.sequencer.counts.items()):
            decisions.add_metric([direction, action, rule], n)
            if action == "reject":
                by_reason[rule] = by_reason.get(rule, 0) + n
        for reason, n in by_reason.items():
            rejects.add_metric([reason], n)
        yield decisions
        yield rejects
        yield GaugeMetricFamily("stategate_connections_open", "Connections open", value=p.open_connections)
        yield CounterMetricFamily("stategate_connections", "Connections accepted", value=p.total_connections)
        yield CounterMetricFamily("stategate_connections_refused", "Connections refused over max_connections",
                                  value=p.refused_connections)  # fmt: skip
        yield CounterMetricFamily("stategate_tls_handshake_failures", "TLS handshakes that failed",
                                  value=p.tls_failures)  # fmt: skip
        yield CounterMetricFamily("stategate_upstream_errors", "Upstream connects that failed",
                                  value=p.upstream_errors)  # fmt: skip
        log = p.log
        yield CounterMetricFamily("stategate_log_lines", "Decision lines written", value=log.lines)
        yield CounterMetricFamily("stategate_log_seals", "Seals written", value=log.seals)
        yield CounterMetricFamily("stategate_log_errors",
                                  "Failed log writes (their messages not forwarded), fsyncs and drop-behind requests",
                                  value=log.errors)  # fmt: skip
        yield CounterMetricFamily("stategate_log_rotations", "Log rotations", value=log.rotations)
        yield GaugeMetricFamily("stategate_log_writable", "1 while the decision log accepts writes",
                                value=0 if log.broken else 1)  # fmt: skip
        yield CounterMetricFamily("stategate_messages_dropped_unlogged",
                                  "Messages dropped because their decision could not be logged",
                                  value=p.dropped_unlogged)  # fmt: skip
        info = GaugeMetricFamily("stategate_policy", "The policy in force", labels=["rev", "mode"])
        info.add_metric([p.matcher.rev, p.matcher.mode], 1)
        yield info
        yield CounterMetricFamily("stategate_policy_reloads", "Policy reloads that took effect",
                                  value=p.reloads)  # fmt: skip
        yield p.metrics.latency.family(
            "stategate_decision_latency_seconds",
            "From a chunk's arrival to its decisions logged and its messages forwarded",
        )


class Metrics:
    def __init__(self, proxy: Proxy) -> None:
        self.latency = BucketCounts(LATENCY_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(ProxyCollector(proxy))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _response(status: str, body: bytes, content_type: str = "text/plain; charset=utf-8") -> bytes:
    head = (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n")  # fmt: skip
    return head.encode() + body


async def serve_admin(proxy: Proxy, listeners: list[trio.SocketListener], *,
                      task_status=trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    proxy.admin_port = listeners[0].socket.getsockname()[1]
    task_status.started(proxy.admin_port)

    async def handle(stream: trio.SocketStream) -> None:
        async with stream:
            data = b""
            with trio.move_on_after(REQUEST_TIMEOUT):
                while b"\r\n\r\n" not in data and len(data) < MAX_REQUEST:
                    chunk = await stream.receive_some(MAX_REQUEST)
                    if not chunk:
                        break
                    data += chunk
            line = data.split(b"\r\n", 1)[0].split()
            if len(line) != 3 or not line[2].startswith(b"HTTP/"):
                reply = _response("400 Bad Request", b"bad request\n")
            elif line[0] != b"GET":
                reply = _response("405 Method Not Allowed", b"only GET\n")
            elif line[1] == b"/metrics":
                reply = _response("200 OK", proxy.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
            elif line[1] == b"/healthz":
                if proxy.log.broken:
                    reply = _response("503 Service Unavailable", b"decision log not writable\n")
                else:
                    reply = _response("200 OK", b"ok\n")
            else:
                reply = _response("404 Not Found", b"not found\n")
            try:
                await stream.send_all(reply)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass

    await trio.serve_listeners(handle, listeners)
