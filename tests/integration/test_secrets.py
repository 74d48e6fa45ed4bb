"""Secrets never show: the real daemon with its MQTT user name and password from the
environment, against a Mosquitto that requires them. The log (JSON lines), `check`,
the health report read from MQTT and the scraped metrics are searched for both."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
import uuid
from typing import Any

import pytest
from bridgeproc import REPO
from broker import MqttWatcher, free_port

from bridge.sim import SimServer

pytestmark = pytest.mark.integration

USER = f"svc-{uuid.uuid4().hex[:12]}"
PASSWORD = f"Pw:{uuid.uuid4().hex}#!"  # ':' and '#' need no quoting through ${VAR}
HEALTH = "modbus/bridge/health"


def _config(broker: Any, sim: SimServer, port: int) -> dict[str, Any]:
    return {
        "version": 1,
        "health_interval": "1s",
        "metrics": {"listen": f"127.0.0.1:{port}"},
        "mqtt": {
            "host": broker.host,
            "port": broker.port,
            "username": "${MQTT_USER}",
            "password": "${MQTT_PASSWORD}",
        },
        "hosts": [{"name": "gw", "address": "127.0.0.1", "port": sim.port}],
        "devices": [
            {"name": "m1", "host": "gw", "unit": 1, "interval": "250ms",
             "points": [{"name": "a", "table": "holding", "address": 0, "type": "uint16"}]},
        ],
    }  # fmt: skip


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as reply:
        return str(reply.read().decode())


async def test_secrets_appear_nowhere(broker_factory, sim_servers, run_bridge) -> None:
    broker = broker_factory(users={USER: PASSWORD})
    sim = await sim_servers([1])
    port = free_port()
    env = {"MQTT_USER": USER, "MQTT_PASSWORD": PASSWORD, "BRIDGE_LOG_FORMAT": "json"}
    bridge = await run_bridge(_config(broker, sim, port), env=env)
    async with MqttWatcher(broker.host, broker.port, HEALTH, username=USER, password=PASSWORD) as w:
        report = await w.wait_for(
            lambda m: m.json()["devices"]["m1"]["available"] is True, timeout=15
        )
    metrics = await asyncio.to_thread(_scrape, port)
    assert await bridge.terminate() == 0
    check = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "bridge", "check", "-c", str(bridge.config_path)],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr
    log = bridge.log()

    # The places a user would look, each with something real in it:
    assert report.json()["hosts"]["gw"]["connected"] is True
    assert "modbus_bridge_mqtt_connected 1.0" in metrics
    lines = [json.loads(line) for line in log.splitlines() if line.strip()]  # all JSON
    messages = [line["message"] for line in lines]
    assert any(m.startswith("MQTT connected") for m in messages), messages
    # The user name is logged and printed where it belongs, hidden.
    assert any("as user ***" in m for m in messages), messages
    assert "as *** with a password" in check.stdout, check.stdout
    for secret in (USER, PASSWORD):
        for where, text in (
            ("log", log),
            ("check", check.stdout + check.stderr),
            ("health", report.payload.decode()),
            ("metrics", metrics),
        ):
            assert secret not in text, f"{where} shows a secret"
