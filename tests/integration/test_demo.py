"""`modbus-bridge demo` end to end: a child process, values printed as they arrive on MQTT.

The default run uses whatever answers on 127.0.0.1:1883 (else the embedded broker);
`BRIDGE_DEMO_EMBEDDED=1` forces the embedded amqtt broker on a free port.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import io
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from bridge.config import parse_config
from bridge.demo import (
    FORCE_EMBEDDED_ENV,
    BrokerChoice,
    Console,
    Gateway,
    build_config_text,
    plan_gateways,
)
from bridge.sim import SimServer

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
DURATION = 6
DEVICES = 4
VALUE_LINE = re.compile(r"^\d\d:\d\d:\d\d  (meter-\d+)\s+(\{.*\})$")
LABELS = {"off", "auto", "manual"}

HAVE_AMQTT = importlib.util.find_spec("amqtt") is not None


def local_broker_answers() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 1883), timeout=0.3):
            return True
    except OSError:
        return False


def run_demo(
    env: dict[str, str], *args: str, timeout: float = 20.0
) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != FORCE_EMBEDDED_ENV}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-m", "bridge", "demo", *args],
        cwd=REPO,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def value_lines(stdout: str) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for line in stdout.splitlines():
        m = VALUE_LINE.match(line)
        if m:
            found.setdefault(m.group(1), []).append(json.loads(m.group(2)))
    return found


def check_values(proc: subprocess.CompletedProcess[str]) -> None:
    detail = f"stdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    assert proc.returncode == 0, detail
    assert "Traceback" not in proc.stderr, detail
    found = value_lines(proc.stdout)
    assert set(found) == {f"meter-{n}" for n in range(1, DEVICES + 1)}, detail
    for name, docs in found.items():
        # Polled every second and changing every second: several states in 6 s.
        assert len(docs) >= 2, detail
        unit = int(name.split("-")[1])
        for doc in docs:
            assert 200.0 < doc["voltage"] < 260.0, doc
            assert doc["current"] >= 0.0, doc
            assert doc["energy"] > 0, doc
            assert doc["mode"] in LABELS, doc  # `off` stays a label, not a YAML boolean
            assert isinstance(doc["relay"], bool), doc
            assert isinstance(doc["alarm"], bool), doc
            assert doc["serial"] == f"MTR{unit:05d}", doc
        energies = [d["energy"] for d in docs]
        assert energies == sorted(energies), f"energy went backwards: {energies}"
    assert re.search(r"meter-\d+\s+is online", proc.stdout), detail


def test_demo_default_broker() -> None:
    """With a broker on 1883 the demo uses it; without one, the embedded broker."""
    if not local_broker_answers() and not HAVE_AMQTT:
        pytest.skip("no broker on 127.0.0.1:1883 and amqtt is not installed")
    proc = run_demo({}, "--duration", str(DURATION), "--devices", str(DEVICES))
    check_values(proc)
    if local_broker_answers():
        assert "the broker already running on 127.0.0.1:1883" in proc.stdout
        assert "mosquitto_sub -h 127.0.0.1 -p 1883 -t 'demo/#' -v" in proc.stdout
    else:
        assert "embedded amqtt broker" in proc.stdout


@pytest.mark.skipif(not HAVE_AMQTT, reason="amqtt is not installed (pip install '.[demo]')")
def test_demo_embedded_broker() -> None:
    proc = run_demo(
        {FORCE_EMBEDDED_ENV: "1"}, "--duration", str(DURATION), "--devices", str(DEVICES)
    )
    check_values(proc)
    m = re.search(r"embedded amqtt broker on 127\.0\.0\.1:(\d+) \(MQTT 3\.1\.1\)", proc.stdout)
    assert m is not None, proc.stdout
    port = int(m.group(1))
    assert port != 1883
    assert f"mosquitto_sub -h 127.0.0.1 -p {port} -t 'demo/#' -v" in proc.stdout


def test_demo_without_any_broker_explains(tmp_path: Path) -> None:
    """The embedded broker is asked for but amqtt cannot be imported: exit 1 with advice."""
    fake = tmp_path / "amqtt"
    fake.mkdir()
    (fake / "__init__.py").write_text('raise ImportError("amqtt hidden by the test")\n')
    path = os.pathsep.join(p for p in (str(tmp_path), os.environ.get("PYTHONPATH", "")) if p)
    proc = run_demo({FORCE_EMBEDDED_ENV: "1", "PYTHONPATH": path}, "--duration", "1")
    assert proc.returncode == 1, proc.stderr
    assert "pip install 'amqtt>=0.12,<0.13'" in proc.stderr  # installable from PyPI
    assert "apt-get install mosquitto" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("devices", [1, 2, 7])
def test_demo_config_loads(devices: int) -> None:
    """The generated YAML goes through the real loader: units spread over the gateways."""
    gateways = [
        Gateway(name, SimServer(units, port=5020 + i), units)
        for i, (name, units) in enumerate(plan_gateways(devices).items())
    ]
    broker = BrokerChoice("127.0.0.1", 1883, "3.1.1", "test")
    config = parse_config(build_config_text(gateways, broker, "demo-test"), env={})
    assert config.mqtt.protocol == 4
    assert config.mqtt.base_topic == "demo"
    assert sorted(d.name for d in config.devices) == sorted(
        f"meter-{n}" for n in range(1, devices + 1)
    )
    assert len(config.hosts) == min(2, devices)
    mode = config.devices[0].point("mode")
    assert mode is not None
    assert mode.value_map == {0: "off", 1: "auto", 2: "manual"}


async def _retained_topics(broker: Any) -> list[str]:
    """What a subscriber arriving now is given as retained, by topic."""
    retained: list[str] = []
    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.subscribe("#")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1.0):
                async for message in client.messages:
                    if message.retain:
                        retained.append(str(message.topic))
    return retained


def test_console_lines() -> None:
    console = Console("demo", ["meter-1", "meter-12"], io.StringIO())
    line = console.format("demo/meter-1", b'{"voltage":231.2,"last_seen":"x"}')
    assert line == 'meter-1   {"voltage": 231.2}'
    assert console.format("demo/meter-1/availability", b"online") == "meter-1   is online"
    assert console.format("demo/bridge/state", b"offline") == "bridge    offline"
    assert console.format("demo/meter-9", b"{}") is None  # not one of ours (an earlier run)
    assert console.format("demo/meter-1", b"") is None  # a cleared retained message
    assert (
        console.format("demo/meter-1/set/result", b'{"status":"ok"}')
        == 'meter-1   answer {"status":"ok"}'
    )


async def test_demo_prints_its_config_takes_writes_and_leaves_nothing_retained(broker) -> None:
    """On the test's own broker (`--broker`): `--print-config` prints a configuration that
    loads, with writable points; a command is carried out and its answer printed; after
    the demo, no retained message of it is left under demo/."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "demo", "--devices", "2", "--duration", "8",
        "--print-config", "--broker", f"{broker.host}:{broker.port}",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdout is not None
    out: list[str] = []

    async def until(text: str) -> None:
        assert proc.stdout is not None
        while not any(text in line for line in out):
            line = await asyncio.wait_for(proc.stdout.readline(), 15)
            assert line, "".join(out)
            out.append(line.decode())

    await until("meter-1  is online")
    printed = "".join(out).split("# the demo's configuration\n", 1)[1].split("\n\n", 1)[0]
    config = parse_config(printed, env={})
    writable = {p.name for d in config.devices for p in d.points if p.writable}
    assert writable == {"mode", "relay"}
    assert f"-p {broker.port} -t demo/meter-1/relay/set -m off" in "".join(out)

    async with aiomqtt.Client(broker.host, broker.port) as client:
        await client.publish("demo/meter-1/set", b'{"mode": "manual", "relay": true}', qos=1)
    await until("answer ")
    answer = next(line for line in out if "answer " in line)
    assert json.loads(answer.split("answer ", 1)[1]) == {
        "status": "ok", "data": {"mode": "manual", "relay": True}
    }  # fmt: skip
    await until('"mode": "manual", "relay": true')  # the meter keeps what was written

    rest, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 0, err.decode()
    assert "meter-1  is offline" in rest.decode()
    assert await _retained_topics(broker) == []


async def test_demo_piped_into_head_stops_cleanly_and_leaves_nothing_retained(broker) -> None:
    """`modbus-bridge demo | head`: once the reader has gone, the demo stops as on Ctrl-C
    (exit 0, retained topics cleared) instead of a traceback for every message."""
    read, write = os.pipe()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bridge", "demo", "--devices", "2", "--duration", "60",
        "--broker", f"{broker.host}:{broker.port}",
        cwd=REPO, stdout=write, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(write)
    with os.fdopen(read, "rb") as reader:  # what `head` does: read a few lines, then leave
        lines = 0
        while lines < 12:
            chunk = await asyncio.to_thread(reader.readline)
            assert chunk, "the demo printed fewer lines than expected"
            lines += 1
    _, err = await asyncio.wait_for(proc.communicate(), 20)  # far less than --duration 60
    assert proc.returncode == 0, err.decode()
    assert "Traceback" not in err.decode() and "BrokenPipe" not in err.decode(), err.decode()
    assert await _retained_topics(broker) == []
