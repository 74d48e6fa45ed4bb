"""deploy/node-red/flows.json in a real Node-RED, against the real bridge, Mosquitto and a
simulated device.

Node-RED is not a project dependency: `make node-red` installs it from npm outside the
repository and runs this module with NODE_RED_HOME pointing at it. Without NODE_RED_HOME
(e.g. in `make test`) every test here is skipped.

What the test sees is what a user sees in the editor: the debug sidebar and the node
status lines, both read from the editor's own websocket (/comms). A write is triggered by
pressing the inject node's button (POST /inject/<id>, what the editor does) and checked on
the simulated device's registers.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from broker import Broker, free_port
from websockets.asyncio.client import ClientConnection, connect

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
FLOWS = REPO / "deploy" / "node-red" / "flows.json"
BOILER_UNIT = 7
SETPOINT_REGISTER = 100  # holding, int16, scale 0.1: the boiler of config.example.yaml

SETTINGS = """module.exports = {{
    uiHost: "127.0.0.1",
    uiPort: {port},
    flowFile: "flows.json",
    logging: {{ console: {{ level: "info", metrics: false, audit: false }} }},
    diagnostics: {{ enabled: false, ui: false }},
    telemetry: {{ enabled: false, updateNotification: false }},
    externalModules: {{ autoInstall: false }},
}};
"""


def red_js() -> tuple[str, Path]:
    home = os.environ.get("NODE_RED_HOME")
    if not home:
        pytest.skip("Node-RED is not installed here: `make node-red` installs and runs it")
    script = Path(home) / "node_modules" / "node-red" / "red.js"
    node = shutil.which("node")
    if not script.exists() or node is None:
        pytest.skip(f"no Node-RED at {script} (or no node): `make node-red` installs it")
    return node, script


def load_flows() -> list[dict[str, Any]]:
    flows: list[dict[str, Any]] = json.loads(FLOWS.read_text())
    return flows


def by_name(flows: list[dict[str, Any]], name: str) -> dict[str, Any]:
    (node,) = [n for n in flows if n.get("name") == name]
    return node


def pointed_at(flows: list[dict[str, Any]], broker: Broker) -> list[dict[str, Any]]:
    """The flow with only the broker config node changed to the test broker."""
    flows = json.loads(json.dumps(flows))
    (config,) = [n for n in flows if n["type"] == "mqtt-broker"]
    config["broker"], config["port"] = broker.host, str(broker.port)
    return flows


@dataclass
class NodeRed:
    """A Node-RED process with its own user directory, and a client of its editor socket."""

    node: str
    script: Path
    user_dir: Path
    port: int = field(default_factory=free_port)
    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.log_path = self.user_dir / "node-red.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._ws: ClientConnection | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def _launch(self, flows: list[dict[str, Any]]) -> subprocess.Popen[bytes]:
        self.user_dir.mkdir(parents=True, exist_ok=True)
        (self.user_dir / "flows.json").write_text(json.dumps(flows))
        settings = self.user_dir / "settings.js"
        settings.write_text(SETTINGS.format(port=self.port))
        with self.log_path.open("wb") as log:
            return subprocess.Popen(
                [self.node, str(self.script), "--userDir", str(self.user_dir),
                 "--settings", str(settings)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip

    async def start(self, flows: list[dict[str, Any]], timeout: float = 30.0) -> None:
        self._proc = self._launch(flows)
        deadline = time.monotonic() + timeout
        while "Started flows" not in self.log():
            assert self._proc.poll() is None, f"Node-RED exited:\n{self.log()}"
            assert time.monotonic() < deadline, f"Node-RED not started:\n{self.log()}"
            await asyncio.sleep(0.1)
        self._ws = await connect(f"ws://127.0.0.1:{self.port}/comms")
        for topic in ("debug", "status/#"):
            await self._ws.send(json.dumps({"subscribe": topic}))
        self._reader = asyncio.create_task(self._read(self._ws))

    async def _read(self, ws: ClientConnection) -> None:
        async for frame in ws:
            batch = json.loads(frame)
            for item in batch if isinstance(batch, list) else [batch]:
                if isinstance(item, dict) and "topic" in item:
                    self.events.append((item["topic"], item.get("data") or {}))

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                await asyncio.to_thread(self._proc.wait, 10)
            except subprocess.TimeoutExpired:
                self._proc.kill()

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as response:
            return json.loads(response.read())

    def press(self, inject_id: str) -> None:
        """The button on an inject node in the editor."""
        request = urllib.request.Request(f"{self.url}/inject/{inject_id}", method="POST")
        with urllib.request.urlopen(request, timeout=5) as response:
            assert response.status == 200

    # -- what the editor shows -------------------------------------------------------------

    def debug(self, node_id: str) -> list[Any]:
        """Messages of one debug node in the sidebar (full `msg` objects)."""
        return [
            json.loads(data["msg"])
            for topic, data in self.events
            if topic == "debug" and data.get("id") == node_id and data.get("format") == "Object"
        ]

    def status(self, node_id: str) -> str:
        texts = [data.get("text", "") for t, data in self.events if t == f"status/{node_id}"]
        return texts[-1] if texts else ""

    def errors(self) -> list[dict[str, Any]]:
        """Errors raised by nodes: the sidebar shows them as debug messages with a level."""
        return [d for t, d in self.events if t == "debug" and d.get("level") is not None]

    async def until(self, what: Callable[[], Any], timeout: float = 10.0) -> Any:
        deadline = time.monotonic() + timeout
        while not (result := what()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"events: {self.events[-10:]}\nlog:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.05)
        return result


@pytest.fixture
async def node_red(tmp_path: Path) -> AsyncIterator[Callable[..., Any]]:
    node, script = red_js()
    started: list[NodeRed] = []

    async def make(flows: list[dict[str, Any]]) -> NodeRed:
        red = NodeRed(node, script, tmp_path / "node-red")
        started.append(red)
        await red.start(flows)
        return red

    yield make
    for red in started:
        await red.stop()


def boiler_config(broker: Broker, server: SimServer) -> dict[str, Any]:
    """The boiler of config.example.yaml (setpoint, state), on the simulator."""
    return {
        "version": 1,
        "mqtt": {"host": broker.host, "port": broker.port, "client_id": "bridge-node-red",
                 "base_topic": "modbus", "output": "json"},
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": server.port, "timeout": "1s"}],
        "devices": [{
            "name": "boiler", "host": "gw", "unit": BOILER_UNIT, "interval": "250ms",
            "points": [
                {"name": "setpoint", "table": "holding", "address": SETPOINT_REGISTER,
                 "type": "int16", "scale": 0.1, "precision": 1, "unit": "°C",
                 "writable": True, "min": 5, "max": 80},
                {"name": "state", "table": "holding", "address": 101, "type": "uint16",
                 "values": {0: "off", 1: "on", 2: "fault"}},
            ],
        }],
    }  # fmt: skip


def test_flow_has_one_broker_config_node_used_by_every_mqtt_node() -> None:
    flows = load_flows()
    (config,) = [n for n in flows if n["type"] == "mqtt-broker"]
    mqtt_nodes = [n for n in flows if n["type"] in ("mqtt in", "mqtt out")]
    assert len(mqtt_nodes) == 5
    assert {n["broker"] for n in mqtt_nodes} == {config["id"]}
    assert by_name(flows, "write command")["retain"] == "false", "commands are never retained"


async def test_flow_shows_values_and_availability_and_writes_land(
    broker: Broker, sim_servers: Any, run_bridge: Any, node_red: Any
) -> None:
    server: SimServer = await sim_servers((BOILER_UNIT,))
    unit = server.unit(BOILER_UNIT)
    unit.set_registers("holding", SETPOINT_REGISTER, [200, 1])  # 20.0 °C, state "on"
    await run_bridge(boiler_config(broker, server))

    flows = load_flows()
    red: NodeRed = await node_red(pointed_at(flows, broker))
    ids = {name: by_name(flows, name)["id"] for name in (
        "device values", "device availability", "availability", "bridge", "write result",
        "boiler setpoint 21.5", "boiler setpoint 95 (refused)", "boiler: read now",
        "device state", "write command",
    )}  # fmt: skip

    # Loaded: every node of the file is deployed, no type is missing, both MQTT ends connect.
    deployed = {n["id"] for n in red.get("/flows")}
    assert {n["id"] for n in flows} <= deployed
    assert "missing" not in red.log().lower()
    for name in ("device state", "write command"):
        await red.until(
            lambda name=name: red.status(ids[name]) == "node-red:common.status.connected"
        )

    # Values: a change on the device reaches the flow as the bridge's state message.
    unit.set_registers("holding", SETPOINT_REGISTER, [234])
    state = await red.until(
        lambda: [m for m in red.debug(ids["device values"]) if m["payload"].get("setpoint") == 23.4]
    )
    assert state[-1]["device"] == "boiler"
    assert state[-1]["payload"] == {"setpoint": 23.4, "state": "on"}
    assert state[-1]["last_seen"].endswith("Z")
    print("device values:", state[-1]["topic"], state[-1]["payload"])

    # Availability and the bridge itself, as the node status lines show them.
    await red.until(lambda: red.status(ids["availability"]) == "1 online")
    await red.until(lambda: red.status(ids["bridge"]) == "online")

    # A write from the inject button lands on the device and its answer is shown.
    t0 = time.monotonic()
    red.press(ids["boiler setpoint 21.5"])
    await red.until(lambda: unit.get_registers("holding", SETPOINT_REGISTER)[0] == 215)
    writes = [r for r in server.request_log if r.time >= t0 and r.function in (6, 16)]
    assert [(r.function, r.address, r.values) for r in writes] == [(6, SETPOINT_REGISTER, (215,))]
    ok = await red.until(
        lambda: [m for m in red.debug(ids["write result"]) if m["payload"]["status"] == "ok"]
    )
    assert ok[-1]["payload"] == {"status": "ok", "data": {"setpoint": 21.5}, "transaction": 1}
    assert ok[-1]["topic"] == "modbus/boiler/set/result"
    print("write result:", ok[-1]["payload"])

    # A refused write: the answer says why, nothing reaches the device.
    t1 = time.monotonic()
    red.press(ids["boiler setpoint 95 (refused)"])
    refused = await red.until(
        lambda: [m for m in red.debug(ids["write result"]) if m["payload"]["status"] == "error"]
    )
    assert refused[-1]["payload"]["transaction"] == 2
    assert "above the maximum 80" in refused[-1]["payload"]["error"]
    print("refused write:", refused[-1]["payload"])
    await asyncio.sleep(0.5)
    assert [r for r in server.request_log if r.time >= t1 and r.function in (6, 16)] == []
    assert unit.get_registers("holding", SETPOINT_REGISTER)[0] == 215

    # "Read now": a get answered with the device's current values.
    red.press(ids["boiler: read now"])
    read = await red.until(
        lambda: [m for m in red.debug(ids["write result"]) if "transaction" not in m["payload"]]
    )
    assert read[-1]["payload"] == {"status": "ok", "data": {"setpoint": 21.5, "state": "on"}}

    # A device that stops answering shows as offline.
    server.silent_units.add(BOILER_UNIT)
    await red.until(lambda: red.status(ids["availability"]) == "offline: boiler", timeout=15)
    print("availability status:", red.status(ids["availability"]))

    # Nothing went wrong on the way: no node error, and no warning or error in Node-RED's
    # log once it began starting the flows (before that it warns about its own set-up in a
    # scratch directory: projects off, no credentials file).
    assert red.errors() == []
    flow_log = red.log().split("[info] Starting flows", 1)[1]
    bad = [line for line in flow_log.splitlines() if "[error]" in line or "[warn]" in line]
    assert bad == [], "\n".join(bad)
