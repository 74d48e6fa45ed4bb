"""Shared fixtures: a real Mosquitto, TLS material, an MQTT watcher, simulated Modbus devices.

Fixture factories (call them inside the test):

- ``broker``: a started anonymous Mosquitto on a free loopback port (`tests.broker.Broker`).
- ``broker_factory(*, users=None, tls=None, require_certificate=False, port=None,
  extra_config="", start=True) -> Broker``: more brokers or authenticated / TLS ones.
- ``tls_files``: a CA with server and client certificates (`tests.broker.TlsFiles`).
- ``await mqtt_watcher(broker, topic="#", **options) -> MqttWatcher``: recording subscriber.
- ``await sim_servers(units=(1,), **options) -> SimServer``: started Modbus simulators.
- ``serial_pair``: a virtual null-modem cable (`socat` pty pair), unpluggable
  (`tests.serial_line.SerialPair`).
- ``await run_bridge(config, env=None, args=(), nofile=None) -> BridgeProcess``: the bridge
  daemon as a child process (`tests.bridgeproc`; `args` follow `run -c <file>`; `nofile`
  its descriptor limit: soft and hard, or a (soft, hard) pair), stopped with SIGTERM at
  teardown if still running. `write_config()` and `reload()` (SIGHUP) change its file.

Everything is stopped at teardown.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest
from bridgeproc import BridgeProcess
from broker import Broker, MqttWatcher, TlsFiles, find_mosquitto, make_tls_files
from hypothesis import HealthCheck, settings
from serial_line import SerialPair

from bridge.sim import SimServer, SimUnit

# Hypothesis' per-example deadline (200 ms) and its "too slow" health check judge the
# machine, not the code: on a loaded two-core runner they failed property tests whose
# properties held. Every property test runs under this profile; a test's own @settings
# (its number of examples) still applies on top of it.
settings.register_profile(
    "bridge", deadline=None, suppress_health_check=[HealthCheck.too_slow], print_blob=True
)
settings.load_profile("bridge")


@pytest.fixture(scope="session")
def mosquitto_path() -> str:
    path = find_mosquitto()
    if path is None:
        pytest.skip("mosquitto is not installed (e.g. `apt-get install mosquitto`)")
    return path


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to generate TLS certificates")
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def broker_factory(mosquitto_path: str, tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    brokers: list[Broker] = []

    def make(
        *,
        users: Mapping[str, str] | None = None,
        tls: TlsFiles | None = None,
        require_certificate: bool = False,
        port: int | None = None,
        extra_config: str = "",
        start: bool = True,
    ) -> Broker:
        if users and shutil.which("mosquitto_passwd") is None:
            pytest.skip("mosquitto_passwd is not installed")
        broker = Broker(
            tmp_path / f"mosquitto-{len(brokers)}",
            port=port,
            users=users,
            tls=tls,
            require_certificate=require_certificate,
            extra_config=extra_config,
            executable=mosquitto_path,
        )
        brokers.append(broker)
        if start:
            broker.start()
        return broker

    yield make
    for broker in brokers:
        broker.stop()


@pytest.fixture
def broker(broker_factory: Callable[..., Broker]) -> Broker:
    return broker_factory()


@pytest.fixture
async def mqtt_watcher() -> AsyncIterator[Callable[..., Awaitable[MqttWatcher]]]:
    watchers: list[MqttWatcher] = []

    async def make(broker: Broker, topic: str = "#", **options: Any) -> MqttWatcher:
        watcher = MqttWatcher(broker.host, broker.port, topic, **options)
        await watcher.start()
        watchers.append(watcher)
        return watcher

    yield make
    for watcher in watchers:
        await watcher.stop()


@pytest.fixture
async def sim_servers() -> AsyncIterator[Callable[..., Awaitable[SimServer]]]:
    servers: list[SimServer] = []

    async def make(
        units: Iterable[int] | Mapping[int, SimUnit] = (1,), **options: Any
    ) -> SimServer:
        server = SimServer(units, **options)
        await server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture
def serial_pair(tmp_path: Path) -> Iterator[SerialPair]:
    if shutil.which("socat") is None:
        pytest.skip("socat is not installed (e.g. `apt-get install socat`)")
    pair = SerialPair(tmp_path / "ttyBRIDGE", tmp_path / "ttyDEVICE")
    pair.plug()
    yield pair
    pair.unplug()


# A failed test's report ends with the last lines of each bridge's log (debug level):
# a failure in a whole run on a loaded machine can then be read, not only re-run.
BRIDGE_LOG_TAIL = 150


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    procs: list[BridgeProcess] = getattr(item, "bridge_processes", [])
    if report.when == "call" and report.failed:
        for n, proc in enumerate(procs):
            try:
                lines = proc.log().splitlines()[-BRIDGE_LOG_TAIL:]
            except OSError as exc:
                lines = [f"(no log: {exc})"]
            report.sections.append((f"bridge {n} log, last lines", "\n".join(lines)))
    return report


@pytest.fixture
async def run_bridge(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Awaitable[BridgeProcess]]]:
    procs: list[BridgeProcess] = []
    request.node.bridge_processes = procs

    async def make(
        config: dict[str, Any],
        env: dict[str, str] | None = None,
        args: tuple[str, ...] = (),
        nofile: int | tuple[int, int] | None = None,
    ) -> BridgeProcess:
        workdir = tmp_path / f"bridge-{len(procs)}"
        workdir.mkdir()
        proc = BridgeProcess(config, workdir, env, args, nofile)
        proc.start()
        procs.append(proc)
        return proc

    yield make
    for proc in procs:
        if proc.alive():
            await proc.terminate()
