"""The health report built in slices (issue 19 §3): the same bytes as built at once,
and the event loop given back between slices."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import time
from collections.abc import Generator

import pytest

from bridge.app import _sliced
from bridge.figures import (
    Figures,
    config_figures,
    device_polls,
    host_figures,
    mqtt_figures,
    proxy_figures,
    report_figures,
)
from bridge.health import DEVICES_PER_STEP, build_health, fit_health, health_payload
from bridge.model import DataType, Device, Point, Table
from bridge.state import DeviceState
from bridge.stats import (
    CommandStats,
    LinkStats,
    PollStats,
    ProxyStats,
    ReloadStats,
    ReportStats,
    SessionStats,
)


def _figures(hosts: int, per_host: int, *, offline: int = 0) -> Figures:
    point = Point(name="a", table=Table.HOLDING, address=0, type=DataType.UINT16, interval=1.0)
    sessions = {}
    for h in range(hosts):
        stats = SessionStats(sockets_opened=1, requests=40 + h, timeouts=h)
        stats.unit(2).timeouts = h
        for k in range(50):
            stats.observe(0.001 * (k % 7 + 1))
        sessions[f"gw{h}"] = stats
    states = {}
    polls = {}
    for h in range(hosts):
        for u in range(1, per_host + 1):
            name = f"gw{h}-unit{u:03d}"
            state = DeviceState(Device(name, f"gw{h}", u, 1.0, (point,)))
            state.available, state.last_seen = u > offline, 1_700_000_000.0 + u
            states[name] = state
            polls[name] = PollStats(cycles=u, backoff_skips=u % 3, probes=u % 2)
    return Figures(
        time=1_700_000_100.0,
        started=1_700_000_000.0,
        rss=1234,
        hosts=tuple(
            host_figures(n, connected=True, stats=s, queue_depth=0, units=range(1, per_host + 1))
            for n, s in sessions.items()
        ),
        devices=device_polls(states, polls, lambda name: 1.5 if name.endswith("7") else 0.0),
        mqtt=mqtt_figures(
            connected=True,
            link=LinkStats(connects=1, published=33),
            commands=CommandStats(writes=4),
            pending=0,
            max_packet_size=1 << 20,
        ),
        config=config_figures(ReloadStats()),
        proxies=(proxy_figures("gw0", ProxyStats(listening=True)),),
        report=report_figures(
            ReportStats(
                longest_slice=0.0012, longest_slice_cpu=0.001, slices=30, held=0.009, took=0.02
            )
        ),
    )


def _run(steps: Generator[None, None, bytes | None]) -> tuple[bytes | None, int]:
    count = 0
    while True:
        try:
            next(steps)
        except StopIteration as done:
            return done.value, count
        count += 1


@pytest.mark.parametrize("shape", [(0, 0), (1, 1), (3, 7), (10, 100)])
def test_the_report_in_steps_is_the_report_at_once(shape: tuple[int, int]) -> None:
    figures = _figures(*shape, offline=3)
    payload, steps = _run(health_payload(figures, 1 << 20))
    assert payload == fit_health(build_health(figures), 1 << 20)
    devices = shape[0] * shape[1]
    # A step per host, per DEVICES_PER_STEP devices, and the head apart from the join.
    assert steps == shape[0] + -(-devices // DEVICES_PER_STEP) + 1
    doc = json.loads(payload or b"")
    assert doc["report"] == {
        "longest_slice_ms": 1.2,
        "longest_slice_cpu_ms": 1.0,
        "slices": 30,
        "held_ms": 9.0,
        "took_ms": 20.0,
    }
    assert list(doc) == ["time", "uptime_s", "rss_bytes", "mqtt", "hosts", "devices", "config",
                         "proxies", "report"]  # fmt: skip


def test_a_report_too_large_for_the_broker_is_trimmed_as_before() -> None:
    figures = _figures(2, 50, offline=5)
    for limit in (12_000, 2_000, 600):
        payload, _ = _run(health_payload(figures, limit))
        assert payload == fit_health(build_health(figures), limit)
        assert payload is not None and len(payload) <= limit
        assert "trimmed" in json.loads(payload)


async def test_slices_give_the_loop_back_and_are_measured() -> None:
    ticks = 0

    async def other() -> None:  # a poll, a change: anything else on the loop
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    collecting: list[bool] = []

    def steps() -> Generator[None, None, None]:
        for _ in range(40):
            collecting.append(gc.isenabled())
            end = time.perf_counter() + 0.0002  # a step of 0.2 ms of work
            while time.perf_counter() < end:
                pass
            yield

    task = asyncio.create_task(other())
    await asyncio.sleep(0)
    try:
        report = await _sliced(steps(), 0.0005)
    finally:
        task.cancel()
    longest, slices = report.longest_slice, report.slices
    # No garbage collection inside the report's slices; on again after it.
    assert collecting and not any(collecting) and gc.isenabled()
    # 8 ms of work in slices of about 0.5 ms (a slice ends at the first step past it).
    assert 8 <= slices <= 20
    assert ticks >= slices - 1  # the other task ran between slices
    # A slice ends at the first step past the budget: 0.5 ms plus at most one 0.2 ms step
    # of its own work. The wall time also counts other processes' turns on a busy
    # machine, so the bound is on the CPU time.
    assert longest >= 0.0004
    assert report.longest_slice_cpu < 0.002 and report.longest_slice_cpu <= longest + 0.0001
    assert 0.008 <= report.held < 0.008 + slices * 0.005 and report.held >= longest


async def test_a_cancelled_report_turns_the_collector_back_on() -> None:
    def steps() -> Generator[None, None, None]:
        while True:
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass
            yield

    task = asyncio.create_task(_sliced(steps(), 0.0005))
    await asyncio.sleep(0.01)
    assert not gc.isenabled()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert gc.isenabled()
