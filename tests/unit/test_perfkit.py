"""The pure helpers of bench/perf.py: profiles, values, percentiles, lag, the table."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from perfkit import (
    PROFILES,
    Profile,
    Row,
    markdown_table,
    percentile,
    point_value,
    schedule,
    speedscope_groups,
    unit_registers,
)

from bridge.app import compile_plan
from bridge.config import load_config
from bridge.planner import ReadBlock, decode_block


def _plan(profile: Profile, tmp_path: Path) -> tuple[ReadBlock, ...]:
    doc = {
        "version": 1,
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": 1502}],
        "devices": [
            {"name": "d{unit}", "host": "gw", "units": "7-8", "points": list(profile.points)}
        ],
    }
    path = tmp_path / f"{profile.name}.yaml"
    path.write_text(yaml.safe_dump(doc))
    return compile_plan(load_config(path))["d7"]


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_floor_reads_the_blocks_the_bridge_plans(name: str, tmp_path: Path) -> None:
    profile = PROFILES[name]
    blocks = _plan(profile, tmp_path)
    assert tuple((b.table.value, b.start, b.count) for b in blocks) == profile.blocks


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_bridge_decodes_the_served_values_and_seq_is_the_generation(
    name: str, tmp_path: Path
) -> None:
    profile = PROFILES[name]
    blocks = _plan(profile, tmp_path)
    for gen in (0, 1, 513, 70_000):
        banks: dict[str, dict[int, int]] = {"holding": {}, "input": {}}
        for table, address, regs in unit_registers(profile, 7, gen):
            for i, reg in enumerate(regs):
                banks[table][address + i] = reg
        values = {}
        for b in blocks:
            data = [banks[b.table.value].get(a, 0) for a in range(b.start, b.end)]
            values.update(decode_block(b, data))
        assert values["seq"] == gen
        for p in profile.points:
            raw = point_value(p, 7, gen)
            want = round(raw * p.get("scale", 1), p["precision"]) if "precision" in p else raw
            assert values[p["name"]] == pytest.approx(want), p["name"]


def test_values_change_with_every_generation() -> None:
    for profile in PROFILES.values():
        for p in profile.points:
            assert point_value(p, 3, 10) != point_value(p, 3, 11), p["name"]


def test_percentile_nearest_rank() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.99) == 5.0
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile(list(reversed(values)), 1.0) == 100.0


def test_schedule_lag_against_each_devices_best_start_and_skipped_slots() -> None:
    starts = {
        "a": [10.0, 11.0, 12.02, 13.0, 15.0],  # slot 4 missing, one start 20 ms late
        "b": [0.5, 1.503, 2.501],
        "c": [],
    }
    sched = schedule(starts, 1.0)
    assert sched.cycles == 8
    assert sched.skipped == 1
    assert max(sched.lags) == pytest.approx(0.02)
    assert sorted(sched.lags)[:3] == pytest.approx([0.0, 0.0, 0.0])
    assert len(sched.lags) == 8


def test_markdown_table_escapes_pipes_and_marks_misses() -> None:
    text = markdown_table(
        [
            Row("3", "a|b", "1 µs", "≤ 2", True, "0.1"),
            Row("5", "x", "y", "z", False),
            Row("", "n", ""),
        ]
    )
    lines = text.splitlines()
    assert lines[2] == "| 3 | a\\|b | 1 µs | ≤ 2 | yes | 0.1 |"
    assert "| **no** |" in lines[3]
    assert lines[4] == "|  | n |  |  |  |  |"


def test_speedscope_time_goes_to_the_innermost_owner() -> None:
    loop = {"name": "_run_once", "file": "/py/lib/python3.11/asyncio/base_events.py"}
    doc = {
        "shared": {
            "frames": [
                {"name": "main", "file": "/repo/bridge/cli.py"},  # 0: entry, owns nothing
                loop,  # 1
                {"name": "publish", "file": "/v/site-packages/paho/mqtt/client.py"},  # 2
                {"name": "send", "file": "/v/site-packages/pymodbus/transport/transport.py"},
                {"name": "write", "file": "/py/lib/python3.11/asyncio/selector_events.py"},  # 4
                {"name": "state_json", "file": "/repo/bridge/payloads.py"},  # 5
                {"name": "dumps", "file": "/py/lib/python3.11/json/__init__.py"},  # 6
                {"name": "select", "file": "/py/lib/python3.11/selectors.py"},  # 7
            ]
        },
        "profiles": [
            {
                "samples": [[0, 1, 2], [0, 1, 3, 4], [0, 1, 5, 6], [0, 1, 7], [0], []],
                "weights": [2, 1, 1, 3, 1, 5],
            }
        ],
    }
    owned, total = speedscope_groups(doc)
    assert total == 8  # empty stacks (idle) do not count
    assert owned == {
        "MQTT client (aiomqtt, paho)": 2,
        "pymodbus transaction path": 1,  # its socket write through asyncio
        "bridge: state, payloads, publish": 1,  # json.dumps called by payloads
        "event loop (asyncio, selectors)": 3,
        "other (stdlib, interpreter)": 1,
    }
