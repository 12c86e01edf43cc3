"""GET /metrics: Prometheus text drawn from the aggregated statistics.

A custom collector turns the control process's view into metric families at
scrape time, so the numbers are always the sum over every worker (and the
retained totals of workers that ended), without prometheus-client's
multiprocess mode and its files.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from revproxy.control.view import ACTIONS, ControlView
from revproxy.proxy.stats import LATENCY_BUCKETS

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# Aggregated counter name -> (metric name, help, label names).
_COUNTERS = {
    "requests": (
        "revproxy_requests",
        "Requests answered, by service, pool, server and status class.",
        ("service", "pool", "server", "code"),
    ),
    "bytes_in": ("revproxy_received_bytes", "Request bytes received from clients.", ("service",)),
    "bytes_out": ("revproxy_sent_bytes", "Response bytes sent to clients.", ("service",)),
    "connections_accepted": (
        "revproxy_client_connections_accepted",
        "Client connections accepted.",
        ("listener",),
    ),
    "server_failures": (
        "revproxy_server_failures",
        "Live-traffic failures of real servers: connect, timeout, reset, protocol, status.",
        ("pool", "server", "kind"),
    ),
    "retries": ("revproxy_retries", "Requests sent again after a failure.", ("pool", "server")),
    "timeouts": ("revproxy_timeouts", "Timeouts that fired, by kind.", ("kind",)),
    "tls_handshake_failures": (
        "revproxy_tls_handshake_failures",
        "Client TLS handshakes that failed.",
        ("listener",),
    ),
    "proxy_refusals": (
        "revproxy_proxy_protocol_refusals",
        "Connections to proxy_protocol listeners closed before HTTP: header, timeout, "
        "source, limit.",
        ("listener", "reason"),
    ),
}
_GAUGES = {
    "client_connections": (
        "revproxy_client_connections",
        "Open client connections.",
        ("listener",),
    ),
    "server_active": (
        "revproxy_server_active_requests",
        "Requests in flight to a real server (each holds a server connection).",
        ("pool", "server"),
    ),
    "server_idle": (
        "revproxy_server_idle_connections",
        "Idle keep-alive connections to a real server.",
        ("pool", "server"),
    ),
}
_HISTOGRAMS = {
    "request_duration": (
        "revproxy_request_duration_seconds",
        "Time from the request head to the end of the response, by service.",
        ("service",),
    ),
    "upstream_duration": (
        "revproxy_upstream_response_seconds",
        "Time from sending a request to a real server to its response head.",
        ("pool", "server"),
    ),
}
_BUCKET_BOUNDS = [str(b) for b in LATENCY_BUCKETS] + ["+Inf"]


class ProxyCollector(Collector):
    def __init__(self, view: ControlView) -> None:
        self.view = view

    def collect(self) -> Iterator[Metric]:
        view = self.view
        stats = view.stats
        counters = stats.counters()
        families: dict[str, CounterMetricFamily] = {
            key: CounterMetricFamily(name, doc, labels=labels)
            for key, (name, doc, labels) in _COUNTERS.items()
        }
        for (key, labels), value in sorted(counters.items()):
            family = families.get(key)
            if family is not None:
                family.add_metric(list(labels), value)
        yield from families.values()

        gauges: dict[str, GaugeMetricFamily] = {
            key: GaugeMetricFamily(name, doc, labels=labels)
            for key, (name, doc, labels) in _GAUGES.items()
        }
        for (key, labels), value in sorted(stats.gauges().items()):
            gauge = gauges.get(key)
            if gauge is not None:
                gauge.add_metric(list(labels), value)
        yield from gauges.values()

        hists: dict[str, HistogramMetricFamily] = {
            key: HistogramMetricFamily(name, doc, labels=labels)
            for key, (name, doc, labels) in _HISTOGRAMS.items()
        }
        for (key, labels), values in sorted(stats.histograms().items()):
            hist = hists.get(key)
            if hist is None or len(values) != len(_BUCKET_BOUNDS) + 1:
                continue
            cumulative = 0.0
            buckets = []
            for bound, count in zip(_BUCKET_BOUNDS, values[:-1], strict=True):
                cumulative += count
                buckets.append((bound, cumulative))
            hist.add_metric(list(labels), buckets, values[-1])
        yield from hists.values()

        up = GaugeMetricFamily(
            "revproxy_server_up",
            "1 when a real server passes its health checks.",
            labels=["pool", "server"],
        )
        admin = GaugeMetricFamily(
            "revproxy_server_admin_state",
            "1 for the administrative state a real server is in.",
            labels=["pool", "server", "state"],
        )
        servers = view.server_state()["servers"]
        for pool, entries in sorted(servers.items()):
            for server, entry in sorted(entries.items()):
                up.add_metric([pool, server], 1.0 if entry["up"] else 0.0)
                for state in ACTIONS.values():
                    admin.add_metric([pool, server, state], 1.0 if entry["admin"] == state else 0.0)
        yield up
        yield admin

        now = time.time()
        certs = GaugeMetricFamily(
            "revproxy_certificate_expiry_days",
            "Days until a listener certificate expires (negative: expired).",
            labels=["listener", "certificate", "file"],
        )
        for cert in view.certificates:
            days = cert.days_left(now)
            if days is not None:
                certs.add_metric([cert.listener, cert.name, cert.file], round(days, 3))
        yield certs

        reloads = CounterMetricFamily(
            "revproxy_reloads", "Configuration reloads attempted, by result.", labels=["result"]
        )
        reloads.add_metric(["ok"], view.reloads.ok)
        reloads.add_metric(["failed"], view.reloads.failed)
        yield reloads
        yield GaugeMetricFamily(
            "revproxy_last_reload_success",
            "1 when the last reload attempt succeeded (or none was attempted).",
            value=1.0 if view.reloads.last_ok else 0.0,
        )
        yield GaugeMetricFamily(
            "revproxy_config_generation",
            "Configurations loaded since start (1 = the first one).",
            value=view.generation,
        )
        yield GaugeMetricFamily(
            "revproxy_workers", "Worker processes reporting.", value=len(stats.workers)
        )
        yield GaugeMetricFamily("revproxy_ready", "1 when listeners are up.", value=view.ready())


def build_registry(view: ControlView) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ProxyCollector(view))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    return generate_latest(registry)
