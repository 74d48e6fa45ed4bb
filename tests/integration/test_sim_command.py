"""`modbus-bridge sim -c config.example.yaml`, then `run` against it: the README's first
thing to try (issue 18, item 2). The example's two gateways are simulated on loopback
with a port offset and its serial bus on a pseudo-terminal; the configuration `sim`
writes takes the real bridge to them over a real Mosquitto. Every point of every device
is read, the writable ones are written and read back, read-only values move.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from broker import free_port

from bridge.config import parse_config

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "config.example.yaml"


def _example_for(broker: Any) -> str:
    """config.example.yaml as it is, but for the test's broker."""
    text = EXAMPLE.read_text()
    assert text.count("  port: 1883\n") == 1
    return text.replace("  port: 1883\n", f"  port: {broker.port}\n")


def _start_sim(config: Path, written: Path) -> tuple[subprocess.Popen[str], str]:
    """The simulator in a child process, on free ports; (process, its banner)."""
    for _ in range(5):
        offset = free_port() - 502  # gw-a on that port, gw-b (also 502) on the next
        proc = subprocess.Popen(
            [sys.executable, "-m", "bridge", "sim", "-c", str(config),
             "--port-offset", str(offset), "--write-config", str(written)],
            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        assert proc.stdout is not None
        lines: list[str] = []
        while True:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("  stop"):
                return proc, "".join(lines)
        err = proc.stderr.read() if proc.stderr else ""
        proc.wait()
        if "in use" not in err:
            pytest.fail(f"sim exited {proc.returncode}: {''.join(lines)}{err}")
    pytest.fail("no free ports for the simulator")


async def test_sim_serves_the_example_and_run_reads_and_writes_it(
    broker, mqtt_watcher, run_bridge, tmp_path: Path
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(_example_for(broker))
    written = tmp_path / "sim.yaml"
    sim, banner = await asyncio.to_thread(_start_sim, config, written)
    try:
        assert "3 hosts, 6 devices" in banner
        assert f"modbus-bridge run -c {written}" in banner
        assert "/dev/pts/" in banner  # the serial bus, on a pseudo-terminal
        moved = parse_config(written.read_text(), env={})
        assert [h.link.__class__.__name__ for h in moved.hosts] == [
            "TcpLink", "TcpLink", "SerialLink"
        ]  # fmt: skip

        watcher = await mqtt_watcher(broker, "modbus/#")
        bridge = await run_bridge(written.read_text())
        original = parse_config(config.read_text(), env={})
        states: dict[str, dict[str, Any]] = {}
        for device in original.devices:
            msg = await watcher.wait_for(
                lambda m, d=device: (
                    m.topic == f"modbus/{d.name}"
                    and all(json.loads(m.payload).get(p.name) is not None for p in d.points)
                ),
                timeout=15,
            )
            states[device.name] = msg.json()
        assert "door_open" in states["boiler"] and "flow_temperature" in states["heatpump"]

        # Read-only values move: meter-1's power changes (read every second, the bridge
        # publishes changes).
        await watcher.wait_for(
            lambda m: (
                m.topic == "modbus/meter-1"
                and m.json().get("power", states["meter-1"]["power"]) != states["meter-1"]["power"]
            ),
            timeout=15,
        )

        # Writable points take a write and read it back: a register, a bit written with
        # function 22, and a point read from a discrete input but written to a coil.
        async with aiomqtt.Client(broker.host, broker.port) as client:
            for command, data in (
                ({"setpoint": 42.5, "transaction": 1}, {"setpoint": 42.5}),
                ({"heater": True, "run": True, "transaction": 2}, {"heater": True, "run": True}),
                ({"run": False, "transaction": 3}, {"run": False}),
            ):
                mark = watcher.mark()
                await client.publish("modbus/boiler/set", json.dumps(command), qos=1)
                answer = await watcher.wait_for("modbus/boiler/set/result", since=mark, timeout=10)
                assert answer.json() == {
                    "status": "ok", "data": data, "transaction": command["transaction"]
                }  # fmt: skip
        assert await bridge.terminate() == 0
        assert "Traceback" not in bridge.log()
    finally:
        sim.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(sim.wait, 10)
        err = sim.stderr.read() if sim.stderr else ""
    assert code == 0, err
    assert "Traceback" not in err
