"""Prometheus metrics on `/metrics` (`metrics.listen`); the only module importing
prometheus_client.

Nothing is counted here. At each scrape the collector asks the event loop for one
`bridge.figures.Figures` snapshot and renders every figure that declares a metric
(`families`, pure), plus the client library's process, platform and GC collectors.
The HTTP server is the library's own, in a daemon thread; the snapshot is built on
the loop (`call_soon_threadsafe`), so the scrape thread never reads live counters
while the loop changes them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    GCCollector,
    PlatformCollector,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)

from bridge import __version__
from bridge.figures import COUNTER, GAUGE, HISTOGRAM, Figures, Latency, Shown, shown_fields
from bridge.model import Metrics

log = logging.getLogger("bridge.metrics")

PREFIX = "modbus_bridge_"
SCRAPE_WAIT = 2.0  # seconds a scrape waits for the event loop's snapshot


def _family(name: str, spec: Shown, labels: Sequence[str]) -> Metric:
    if spec.kind == COUNTER:
        return CounterMetricFamily(name, spec.help, labels=labels)
    if spec.kind == GAUGE:
        return GaugeMetricFamily(name, spec.help, labels=labels)
    if spec.kind == HISTOGRAM:
        return HistogramMetricFamily(name, spec.help, labels=labels)
    raise ValueError(f"unknown metric kind {spec.kind!r}")


def _buckets(latency: Latency) -> list[tuple[str, float]]:
    bounds = [repr(float(b)) for b in latency.bounds] + ["+Inf"]
    return [(le, float(n)) for le, n in zip(bounds, latency.cumulative, strict=True)]


class _Families:
    """Metric families filled record by record: a family is created at its first
    sample, with the identity labels of that record plus the figure's own labels."""

    def __init__(self) -> None:
        self.by_name: dict[str, Metric] = {}

    def add(self, record: object, identity: Sequence[tuple[str, str]]) -> None:
        for name, spec in shown_fields(record):
            if spec.metric is None:
                continue
            value = getattr(record, name)
            label_names = [k for k, _ in identity] + [k for k, _ in spec.labels]
            label_values = [v for _, v in identity] + [v for _, v in spec.labels]
            if spec.label is not None:
                label_names.append(spec.label)
            full = PREFIX + spec.metric
            family = self.by_name.get(full)
            if family is None:
                family = self.by_name[full] = _family(full, spec, label_names)
            if spec.kind == HISTOGRAM:
                assert isinstance(family, HistogramMetricFamily)
                family.add_metric(label_values, _buckets(value), value.total)
            elif spec.label is not None:
                for key, number in sorted(value.items()):
                    family.add_metric([*label_values, key], float(number))  # type: ignore[attr-defined]
            else:
                number = spec.to_metric(value)
                if number is not None:
                    family.add_metric(label_values, number)  # type: ignore[attr-defined]


def families(figures: Figures) -> list[Metric]:
    """Every metric of one snapshot. Label values are names from the configuration
    (host, device, unit) or the fixed values the figures declare."""
    out = _Families()
    for host in figures.hosts:
        out.add(host, [("host", host.name)])
        for unit in host.units:
            out.add(unit, [("host", host.name), ("unit", str(unit.unit))])
    for device in figures.devices:
        out.add(device, [("device", device.name), ("host", device.host)])
    out.add(figures.mqtt, [])
    out.add(figures.config, [])
    build = {"version": __version__}
    if figures.config.shard is not None:
        build["shard"] = figures.config.shard  # which process of a sharded fleet this is
    info = InfoMetricFamily(
        PREFIX + "build", "The bridge's version, and its shard of the fleet.", value=build
    )
    return [info, *out.by_name.values()]


class _Collector:
    """Renders a fresh snapshot at every scrape."""

    def __init__(self, snapshot: Callable[[], Figures]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[Metric]:
        yield from families(self._snapshot())

    def describe(self) -> list[Metric]:
        return []  # registering must not take a snapshot


def registry_for(snapshot: Callable[[], Figures]) -> CollectorRegistry:
    """A registry with the bridge's metrics and the usual process collectors."""
    registry = CollectorRegistry(auto_describe=False)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(_Collector(snapshot))
    return registry


class MetricsServer:
    """The HTTP endpoint; `figures` is called on the event loop for each scrape."""

    def __init__(self, settings: Metrics, figures: Callable[[], Figures]) -> None:
        self.settings = settings
        self._figures = figures
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: Any = None

    def _snapshot(self) -> Figures:
        """From the HTTP thread: a snapshot built on the event loop."""
        loop = self._loop
        if loop is None:
            raise RuntimeError("the metrics server is not running")
        result: concurrent.futures.Future[Figures] = concurrent.futures.Future()

        def build() -> None:
            try:
                result.set_result(self._figures())
            except BaseException as exc:  # the scrape fails with it, the bridge runs on
                result.set_exception(exc)

        loop.call_soon_threadsafe(build)
        return result.result(SCRAPE_WAIT)

    def start(self) -> None:
        """Listen now (on the event loop's thread); raises OSError when the address
        cannot be bound."""
        self._loop = asyncio.get_running_loop()
        registry = registry_for(self._snapshot)
        self._server, _thread = start_http_server(
            self.settings.port, addr=self.settings.address, registry=registry
        )

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # shutdown() waits for the serving thread's next poll (up to 0.5 s): not on the loop.
        await asyncio.get_running_loop().run_in_executor(None, server.shutdown)
        server.server_close()
        self._loop = None
