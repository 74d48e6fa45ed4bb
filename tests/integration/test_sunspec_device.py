"""SunSpec discovery end to end: a device image built from pysunspec2's definitions and
encoders (tests/sunspec_image.py: models 1, 103, 160 with two modules, 203 and 802;
distinct values, negative scale factors, points not implemented), served by our
simulator; the real daemon with `sunspec: true` and no points; a real Mosquitto.

The proof: what the bridge publishes equals, point for point, what pysunspec2's own
Modbus client reads from the same server (its computed values: scale factors applied,
not implemented as None; its enum numbers turned into the definition's names), and a
write to a read-write point lands with its scale factor.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from fleet import mqtt_section

from bridge.sim import SimServer, SimUnit
from tests.sunspec_image import PROOF_MODELS, build_image, definition

pytestmark = pytest.mark.integration

UNIT = 3


def _serve(layout_image: dict[int, int]) -> SimUnit:
    lo, hi = min(layout_image), max(layout_image) + 1
    unit = SimUnit(valid={"holding": [(lo, hi)]})  # outside the map: exception 2
    unit.set_registers("holding", lo, [layout_image.get(a, 0) for a in range(lo, hi)])
    return unit


def _pysunspec2_read(port: int) -> dict[str, Any]:
    """pysunspec2's own client: scan the device and read every model, then name each
    value as the bridge does (docs/sunspec.md)."""
    from sunspec2.modbus import client

    device = client.SunSpecModbusClientDeviceTCP(slave_id=UNIT, ipaddr="127.0.0.1", ipport=port)
    try:
        device.scan()
        out: dict[str, Any] = {}
        for model_id in (1, 103, 160, 203, 802):
            for model in device.models[model_id]:
                doc = definition(model_id)
                values = model.get_dict(computed=True)
                _flatten(doc["group"], values, doc["group"]["name"], out, top=True)
        return out
    finally:
        device.close()


def _flatten(
    gdef: dict[str, Any], values: dict[str, Any], prefix: str, out: dict[str, Any], *, top: bool
) -> None:
    for p in gdef["points"]:
        if p["type"] == "pad" or (top and p["name"] in ("ID", "L")):
            continue
        value = values.get(p["name"])
        if value is not None and p["type"].startswith("enum"):
            value = {s["value"]: s["name"] for s in p.get("symbols", [])}.get(value, value)
        out[f"{prefix}_{p['name']}"] = value
    for sub in gdef.get("groups", []):
        found = values.get(sub["name"])
        if isinstance(found, list):
            for i, g in enumerate(found, 1):
                _flatten(sub, g, f"{prefix}_{sub['name']}_{i}", out, top=False)
        elif isinstance(found, dict):
            _flatten(sub, found, f"{prefix}_{sub['name']}", out, top=False)


async def _state(watcher: Any, *, since: int = 0, has: str = "ac_power") -> dict[str, Any]:
    message = await watcher.wait_for(
        lambda m: m.topic == "modbus/inv" and has.encode() in m.payload, timeout=20, since=since
    )
    state: dict[str, Any] = message.json()
    return state


def _config(broker: Any, server: SimServer, timeout: float, **device: Any) -> dict[str, Any]:
    """One gateway with the SunSpec inverter `inv` at UNIT, polled every second."""
    return {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": timeout}],
        "devices": [
            {"name": "inv", "host": "gw", "unit": UNIT, "sunspec": True, "interval": "1s", **device}
        ],
    }


async def test_the_bridge_publishes_what_pysunspec2_reads(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    layout = build_image(PROOF_MODELS)
    server: SimServer = await sim_servers({UNIT: _serve(layout.image)})
    watcher = await mqtt_watcher(broker, "modbus/#")
    config = _config(broker, server, timeout=1.0, write_multiple=True)
    await run_bridge(config)
    state = await _state(watcher)

    theirs = await asyncio.to_thread(_pysunspec2_read, server.port)
    assert len(theirs) > 200
    ours = {name: state.get(name, "absent") for name in theirs}
    assert ours == theirs
    # scale factors applied, not implemented as null, strings, enums, the standard names
    assert state["inverter_three_phase_VA"] is None
    assert state["mppt_module_2_Tmp"] is None
    assert state["common_Mn"] == "SunSpecTest"
    assert state["ac_power"] == theirs["inverter_three_phase_W"]
    assert state["power"] == theirs["ac_meter_abcn_W"]
    assert state["soc"] == theirs["battery_SoC"]
    assert state["pv2_voltage"] == theirs["mppt_module_2_DCV"]

    # A write to a read-write point lands with its scale factor (SoC_SF = -1).
    address = layout.addresses[802, 1, "SoCRsvMin"]
    mark = watcher.mark()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("modbus/inv/battery_SoCRsvMin/set", b"12.5", qos=1)
    result = await watcher.wait_for("modbus/inv/set/result", timeout=5, since=mark)
    assert result.json()["status"] == "ok", result.json()
    assert result.json()["data"]["battery_SoCRsvMin"] == 12.5
    assert server.unit(UNIT).get_registers("holding", address, 1) == [125]
    after = await asyncio.to_thread(_pysunspec2_read, server.port)
    assert after["battery_SoCRsvMin"] == 12.5
    # a read-only point is refused
    mark = watcher.mark()
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("modbus/inv/battery_SoC/set", b"50", qos=1)
    refused = await watcher.wait_for("modbus/inv/set/result", timeout=5, since=mark)
    assert refused.json()["status"] == "error"


async def test_the_device_card_and_the_inventory_come_from_model_1(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    layout = build_image(PROOF_MODELS, base=50001)
    server: SimServer = await sim_servers({UNIT: _serve(layout.image)})
    watcher = await mqtt_watcher(broker, "#")
    config = {
        "version": 1,
        "mqtt": mqtt_section(broker),
        "homeassistant": {"enabled": True},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port}],
        "devices": [{"name": "inv", "host": "gw", "unit": UNIT, "sunspec": True}],
    }
    await run_bridge(config)
    await _state(watcher)
    card = await watcher.wait_for(
        lambda m: m.topic.startswith("homeassistant/device/") and b"ac_power" in m.payload,
        timeout=10,
    )
    dev = card.json()["dev"]
    assert (dev["manufacturer"], dev["model"], dev["serial_number"], dev["sw_version"]) == (
        "SunSpecTest",
        "Hybrid-10K",
        "SN0042-7",
        "4.2.1",
    )
    components = card.json()["cmps"]
    names = {c.get("object_id", c.get("default_entity_id", "")) for c in components.values()}
    assert any("ac_power" in n for n in names)

    def inventoried(m: Any) -> bool:
        if m.topic != "modbus/bridge/devices":
            return False
        entry = next(d for d in json.loads(m.payload) if d["name"] == "inv")
        return entry["sunspec_models"] is not None

    inventory = await watcher.wait_for(inventoried, timeout=10)
    entry = next(d for d in json.loads(inventory.payload) if d["name"] == "inv")
    assert entry["sunspec_models"] == [1, 103, 160, 203, 802]


async def test_a_reopened_session_reads_the_chain_again_and_a_reload_keeps_it(
    broker, sim_servers, mqtt_watcher, run_bridge
) -> None:
    """The device comes back from a restart with a second meter: after the reconnect
    the bridge reads the chain again and publishes it; a reload of an unchanged
    configuration keeps the points read."""
    layout = build_image(PROOF_MODELS)
    server: SimServer = await sim_servers({UNIT: _serve(layout.image)})
    watcher = await mqtt_watcher(broker, "modbus/#")
    config = _config(broker, server, timeout=0.5)
    bridge = await run_bridge(config)
    first = await _state(watcher)
    assert "power_2" not in first

    await server.stop()
    bigger = build_image([*PROOF_MODELS, (203, {})])
    server.units[UNIT] = _serve(bigger.image)
    await server.start()
    mark = watcher.mark()
    again = await _state(watcher, since=mark, has="power_2")
    assert again["ac_meter_abcn_2_W"] == again["power_2"] is not None
    assert again["ac_meter_abcn_1_W"] == first["ac_meter_abcn_W"]

    mark = watcher.mark()
    bridge.reload()
    await asyncio.sleep(1.5)  # the reload is done (nothing changed)
    server.unit(UNIT).set_registers("holding", bigger.addresses[103, 1, "W"], [4321])
    after = await _state(watcher, since=mark, has="4321")
    assert after["ac_power"] == 4321  # W_SF = 0
    assert after["power_2"] == again["power_2"]


async def _cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", *args, cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_scan_sunspec_prints_the_chain(sim_servers) -> None:
    layout = build_image([*PROOF_MODELS, (64999, {})], base=40001)
    server: SimServer = await sim_servers({UNIT: _serve(layout.image)})
    where = ("--host", f"127.0.0.1:{server.port}", "--unit", str(UNIT))
    code, out, err = await _cli("scan", "--sunspec", *where)
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"127.0.0.1:{server.port} unit {UNIT}: SunSpec marker at 40001, 6 models"
    assert "model 103" in lines[2] and "; standard names: " in lines[2]
    assert "ac_power" in lines[2]
    assert "model 160" in lines[3] and "pv2_voltage" in lines[3]
    assert "model 64999" in lines[6] and "published raw as model_64999_r0..r3" in lines[6]
    assert lines[-1] == "device: SunSpecTest Hybrid-10K, serial SN0042-7, version 4.2.1"

    code, out, _ = await _cli("scan", "--sunspec", *where, "--json")
    doc = json.loads(out)
    assert [m["id"] for m in doc["models"]] == [1, 103, 160, 203, 802, 64999]
    assert doc["models"][2]["address"] == layout.addresses[160, 1, "DCA_SF"] - 2

    code, _, err = await _cli("scan", "--sunspec", *where[:2], "--unit", "9")
    assert code == 1
