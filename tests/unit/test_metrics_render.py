"""The metrics rendering of one snapshot, parsed back with prometheus_client's parser."""

from __future__ import annotations

import dataclasses

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bridge.figures import (
    Figures,
    config_figures,
    device_polls,
    host_figures,
    mqtt_figures,
    proxy_figures,
)
from bridge.health import build_health
from bridge.metrics import PREFIX, families, registry_for
from bridge.model import DataType, Device, Point, Shard, Table
from bridge.state import DeviceState
from bridge.stats import (
    PROXY_CLOSES,
    PROXY_RESULTS,
    CommandStats,
    LinkStats,
    PollStats,
    ProxyStats,
    ReloadStats,
    SessionStats,
)


def _figures() -> Figures:
    stats = SessionStats(sockets_opened=1, requests=40, probes=6, probe_timeouts=5, probes_cut=1)
    stats.unit(2).crc_errors = 3
    for seconds in (0.0005, 0.004, 0.004, 0.2, 9.0):
        stats.observe(seconds)
    stats.failed("timeout")
    stats.failed("exception")
    point = Point(name="a", table=Table.HOLDING, address=0, type=DataType.UINT16, interval=1.0)
    states = {f"d{u}": DeviceState(Device(f"d{u}", "gw", u, 1.0, (point,))) for u in (1, 2)}
    states["d1"].available, states["d1"].last_seen = True, 1_700_000_000.5
    return Figures(
        time=1_700_000_100.0,
        started=1_700_000_000.0,
        rss=1,
        hosts=(host_figures("gw", connected=True, stats=stats, queue_depth=4, units=[1, 2]),),
        devices=device_polls(
            states,
            {"d2": PollStats(cycles=9, skipped=2, backoff_skips=5, failures=4, probes=6)},
            lambda name: 12.5 if name == "d2" else 0.0,
        ),
        mqtt=mqtt_figures(
            connected=False,
            link=LinkStats(published=7, dropped=1, oversize=2),
            commands=CommandStats(ok=3, rejected=1),
            pending=6,
            max_packet_size=1000,
        ),
        config=config_figures(ReloadStats(ok=2, invalid=1, last=1_700_000_050.0)),
    )


def _scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = generate_latest(registry).decode()
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def test_every_figure_with_a_metric_renders_with_bounded_labels() -> None:
    samples = _scrape(registry_for(_figures))
    m = PREFIX

    def value(name: str, **labels: str) -> float:
        return samples[(m + name, tuple(sorted(labels.items())))]

    assert value("host_connected", host="gw") == 1
    assert value("host_sockets_opened_total", host="gw") == 1
    assert value("host_requests_total", host="gw") == 40
    assert value("host_request_errors_total", host="gw", kind="timeout") == 1
    assert value("host_request_errors_total", host="gw", kind="exception") == 1
    assert value("host_request_errors_total", host="gw", kind="connection") == 0
    assert value("host_queue_depth", host="gw") == 4
    assert value("host_probes_total", host="gw") == 6
    assert value("host_probe_timeouts_total", host="gw") == 5
    assert value("host_probes_cut_total", host="gw") == 1
    assert value("device_probes_total", device="d2", host="gw") == 6
    # every configured unit has its series (zeros included); the faulty one counts
    assert value("unit_crc_errors_total", host="gw", unit="2") == 3
    assert value("unit_crc_errors_total", host="gw", unit="1") == 0
    # a histogram in seconds: cumulative buckets, +Inf equal to the count
    assert value("host_request_duration_seconds_bucket", host="gw", le="0.001") == 1
    assert value("host_request_duration_seconds_bucket", host="gw", le="0.005") == 3
    assert value("host_request_duration_seconds_bucket", host="gw", le="5.0") == 4
    assert value("host_request_duration_seconds_bucket", host="gw", le="+Inf") == 5
    assert value("host_request_duration_seconds_count", host="gw") == 5
    assert abs(value("host_request_duration_seconds_sum", host="gw") - 9.2085) < 1e-9
    assert value("device_available", device="d1", host="gw") == 1
    assert value("device_available", device="d2", host="gw") == 0  # no poll yet counts as 0
    assert value("device_last_read_timestamp_seconds", device="d1", host="gw") == 1_700_000_000.5
    assert (m + "device_last_read_timestamp_seconds", (("device", "d2"), ("host", "gw"))) not in (
        samples
    )  # never read: no sample rather than a fake time
    assert value("device_skipped_cycles_total", device="d2", host="gw", reason="overrun") == 2
    assert value("device_skipped_cycles_total", device="d2", host="gw", reason="backoff") == 5
    assert value("device_backoff_seconds", device="d2", host="gw") == 12.5
    assert value("device_poll_errors_total", device="d2", host="gw") == 4
    assert value("mqtt_connected") == 0
    assert value("mqtt_messages_published_total") == 7
    assert value("mqtt_messages_dropped_total", reason="queue_full") == 1
    assert value("mqtt_messages_dropped_total", reason="oversize") == 2
    assert value("mqtt_commands_total", result="ok") == 3
    assert value("mqtt_commands_total", result="rejected") == 1
    assert value("mqtt_pending_messages") == 6
    assert value("mqtt_max_packet_size_bytes") == 1000
    assert value("config_reloads_total", result="ok") == 2
    assert value("config_reloads_total", result="invalid") == 1
    assert value("config_last_reload_timestamp_seconds") == 1_700_000_050.0
    assert value("build_info", version=__import__("bridge").__version__) == 1
    # the usual process collectors
    assert ("process_resident_memory_bytes", ()) in samples
    assert any(name == "python_info" for name, _ in samples)


def test_a_shard_is_named_in_build_info() -> None:
    figures = dataclasses.replace(
        _figures(), config=config_figures(ReloadStats(), Shard(2, 4, "plant"))
    )
    [info] = [f for f in families(figures) if f.name == PREFIX + "build"]
    assert info.samples[0].labels == {"version": __import__("bridge").__version__, "shard": "2/4"}
    assert build_health(figures)["config"]["shard"] == "2/4"


def test_counters_end_in_total_and_labels_come_from_fixed_sets() -> None:
    text = generate_latest(registry_for(_figures)).decode()
    allowed = {
        "host": {"gw"},
        "device": {"d1", "d2"},
        "unit": {"1", "2"},
        "kind": {"exception", "timeout", "bad_reply", "connection", "other"},
        "reason": {"overrun", "backoff", "queue_full", "oversize", "refused"},
        "result": {"ok", "rejected", "failed", "retained", "overloaded", "invalid"},
    }
    for family in text_string_to_metric_families(text):
        if not family.name.startswith(PREFIX):
            continue
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith("_total"), sample.name
            for label, val in sample.labels.items():
                if label in allowed:
                    assert val in allowed[label], (sample.name, label, val)
                else:
                    assert label in ("le", "version"), (sample.name, label)


def test_a_proxy_shows_its_clients_and_requests_by_host() -> None:
    stats = ProxyStats(listening=True, clients=2, connections=9, writes=1, waiting=1)
    stats.requests["answered"] = 40
    stats.requests["refused"] = 3
    stats.closed["out_of_step"] = 1
    figures = dataclasses.replace(_figures(), proxies=(proxy_figures("gw", stats),))
    samples = _scrape(registry_for(lambda: figures))

    def value(name: str, **labels: str) -> float:
        return samples[(PREFIX + name, tuple(sorted(labels.items())))]

    assert value("proxy_listening", host="gw") == 1
    assert value("proxy_clients", host="gw") == 2
    assert value("proxy_connections_total", host="gw") == 9
    assert value("proxy_requests_total", host="gw", result="answered") == 40
    assert value("proxy_requests_total", host="gw", result="refused") == 3
    assert value("proxy_requests_total", host="gw", result="failed") == 0
    assert value("proxy_connections_closed_total", host="gw", reason="out_of_step") == 1
    assert value("proxy_writes_total", host="gw") == 1
    assert value("proxy_requests_waiting", host="gw") == 1
    assert value("proxy_requests_in_flight", host="gw") == 0
    proxy_labels = {
        dict(labels).get(key)
        for (name, labels) in samples
        if name.startswith(PREFIX + "proxy_")
        for key in ("result", "reason")
    } - {None}
    assert proxy_labels == set(PROXY_RESULTS) | set(PROXY_CLOSES)
    doc = build_health(figures)["proxies"]["gw"]
    assert doc["clients"] == 2 and doc["listening"] is True
    assert doc["requests"] == {"answered": 40, "exception": 0, "refused": 3, "failed": 0}
    assert doc["closed"]["out_of_step"] == 1
    assert "proxies" not in build_health(_figures())  # no proxy: no section
