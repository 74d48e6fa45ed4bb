"""`modbus-bridge demo`: the real bridge against simulated meters, no infrastructure needed.

What runs, all on loopback and in this one process:

- two simulated Modbus TCP gateways (`bridge.sim.SimServer`) on free ports, the demo
  meters spread over them as unit ids, their values changing every second;
- an MQTT broker: the one given with ``--broker``, else whatever already answers on
  127.0.0.1:1883 (a local Mosquitto, say), otherwise an embedded amqtt broker on a free
  port (amqtt, the optional extra ``[demo]``). Set ``BRIDGE_DEMO_EMBEDDED=1``
  to use the embedded broker even when port 1883 answers;
- the bridge itself, configured from YAML text through the normal loader
  (``--print-config`` prints that text); the meters' `mode` and `relay` are writable;
- a console: a second MQTT connection subscribed to ``demo/#`` that prints each device
  state and availability change, and each answer to a command, as it arrives on MQTT.

It runs until Ctrl-C / SIGTERM, or for ``duration`` seconds, then shuts everything down
and clears the retained messages it left on the broker (the devices' state and
availability, the bridge's state and health), so a later subscriber finds nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import socket
import struct
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TextIO

from bridge.app import Bridge
from bridge.config import parse_config, parse_endpoint
from bridge.errors import ConfigError
from bridge.mqtt import Incoming, MqttLink, Subscription
from bridge.process import EXIT_FAILURE, EXIT_OK, EXIT_USAGE, Process, bounded, cancel, run_main
from bridge.sim import SimServer, SimUnit
from bridge.topics import Topics

log = logging.getLogger("bridge.demo")

BASE_TOPIC = "demo"
CONSOLE_BASE = "demo-console"  # the console connection's own status topic lives here
FORCE_EMBEDDED_ENV = "BRIDGE_DEMO_EMBEDDED"
LOCAL_BROKER = ("127.0.0.1", 1883)
GATEWAY_NAMES = ("gw-a", "gw-b")
MAX_DEVICES = 247  # Modbus unit ids 1..247
UPDATE_EVERY = 1.0  # seconds between changes of the simulated values
POLL_INTERVAL = "1s"
CONNECT_WAIT = 5.0  # seconds to wait for the console to reach the broker
RETAINED_SETTLE = 0.3  # seconds: retained leftovers of an earlier run arrive, unprinted
HARD_EXIT_AFTER = 15.0  # seconds after shutdown began: the process is gone by then

NO_BROKER_HELP = """\
modbus-bridge demo needs an MQTT broker: {reason}.
Get one of these, then run the demo again:
  pip install 'amqtt>=0.12,<0.13'           embedded broker (the [demo] extra), started by the demo
  sudo apt-get install mosquitto            a local Mosquitto on 127.0.0.1:1883
  modbus-bridge demo --broker HOST[:PORT]   a broker elsewhere
"""

# -- the simulated meters -------------------------------------------------------------------

# Register map of the demo meter; the template below must match it.
VOLTAGE = ("input", 0)  # float32, V
CURRENT = ("input", 2)  # float32, A
ENERGY = ("holding", 10)  # uint32, 0.001 kWh (Wh)
MODE = ("holding", 20)  # uint16: 0 off, 1 auto, 2 manual
STATUS = ("holding", 21)  # uint16 bit field: bit 0 ready, bit 3 voltage alarm
SERIAL = ("holding", 30)  # string, 4 registers = 8 characters
RELAY = ("coil", 0)
SERIAL_REGISTERS = 4

METER_TEMPLATE = """\
  meter:
    byte_order: big
    word_order: big
    points:
      - {name: voltage, table: input, address: 0, type: float32, precision: 1, unit: V}
      - {name: current, table: input, address: 2, type: float32, precision: 2, unit: A}
      - {name: energy, table: holding, address: 10, type: uint32, scale: 0.001, precision: 3, unit: kWh}
      - {name: mode, table: holding, address: 20, type: uint16, values: {0: off, 1: auto, 2: manual}, writable: true}
      - {name: relay, table: coil, address: 0, type: bool, writable: true}
      - {name: alarm, table: holding, address: 21, type: uint16, bit: 3}
      - {name: serial, table: holding, address: 30, type: string, length: 4}
"""  # noqa: E501

NOMINAL_VOLTAGE = 230.0
ALARM_BAND = 8.0  # volts either side of nominal before the alarm bit is set


def _float32(value: float) -> list[int]:
    raw = struct.pack(">f", value)
    return [int.from_bytes(raw[0:2], "big"), int.from_bytes(raw[2:4], "big")]


def _uint32(value: int) -> list[int]:
    value &= 0xFFFFFFFF
    return [value >> 16, value & 0xFFFF]


def _text(value: str, registers: int) -> list[int]:
    raw = value.encode("ascii")[: 2 * registers].ljust(2 * registers, b"\x00")
    return [int.from_bytes(raw[i : i + 2], "big") for i in range(0, len(raw), 2)]


class Meter:
    """One simulated energy meter: a bit of physics, written into a `SimUnit`."""

    def __init__(self, unit_id: int, unit: SimUnit, rng: random.Random) -> None:
        self.unit_id = unit_id
        self.unit = unit
        self.rng = rng
        self.voltage = NOMINAL_VOLTAGE + rng.uniform(-3.0, 3.0)
        self.load = rng.uniform(8.0, 30.0)  # amperes drawn while the relay is closed
        self.energy = rng.randrange(500_000, 9_000_000)  # Wh
        self.energy_rest = 0.0  # Wh not yet counted
        self.mode = 1
        self.relay = rng.random() < 0.7
        unit.set_registers(*SERIAL, _text(f"MTR{unit_id:05d}", SERIAL_REGISTERS))
        self.write()

    @property
    def current(self) -> float:
        return self.load if self.relay else 0.0

    @property
    def alarm(self) -> bool:
        return abs(self.voltage - NOMINAL_VOLTAGE) > ALARM_BAND

    def step(self, seconds: float) -> None:
        rng = self.rng
        # What a write command set (mode and relay are writable) comes first.
        [self.mode] = self.unit.get_registers(*MODE)
        [self.relay] = self.unit.get_bits(*RELAY)
        # Voltage wanders around nominal, pulled back, with a rare dip or surge.
        self.voltage += rng.gauss(0.0, 0.6) + (NOMINAL_VOLTAGE - self.voltage) * 0.1
        if rng.random() < 0.02:
            self.voltage += rng.choice((-1.0, 1.0)) * rng.uniform(9.0, 14.0)
        self.load = min(40.0, max(2.0, self.load + rng.gauss(0.0, 0.4)))
        # Mode off keeps the relay open; auto switches it now and then; manual leaves it
        # to commands.
        if self.mode == 0:
            self.relay = False
        elif self.mode == 1 and rng.random() < 0.05:
            self.relay = not self.relay
        self.energy_rest += self.voltage * self.current * seconds / 3600.0
        whole = math.floor(self.energy_rest)
        self.energy += whole
        self.energy_rest -= whole
        self.write()

    def write(self) -> None:
        u = self.unit
        u.set_registers(*VOLTAGE, _float32(self.voltage))
        u.set_registers(*CURRENT, _float32(self.current))
        u.set_registers(*ENERGY, _uint32(self.energy))
        u.set_registers(*MODE, [self.mode])
        u.set_registers(*STATUS, [0x0001 | (0x0008 if self.alarm else 0)])
        u.set_bits(*RELAY, [self.relay])


@dataclass
class Gateway:
    name: str
    server: SimServer
    units: list[int]


def plan_gateways(devices: int) -> dict[str, list[int]]:
    """Unit ids 1..devices dealt round-robin over the gateways (at most one per device)."""
    names = GATEWAY_NAMES[: min(len(GATEWAY_NAMES), devices)]
    plan: dict[str, list[int]] = {name: [] for name in names}
    for unit in range(1, devices + 1):
        plan[names[(unit - 1) % len(names)]].append(unit)
    return plan


async def start_gateways(devices: int, rng: random.Random) -> tuple[list[Gateway], list[Meter]]:
    gateways: list[Gateway] = []
    meters: list[Meter] = []
    try:
        for name, units in plan_gateways(devices).items():
            server = SimServer({u: SimUnit() for u in units}, host="127.0.0.1", port=0)
            meters.extend(Meter(u, server.unit(u), rng) for u in units)
            await server.start()
            gateways.append(Gateway(name, server, units))
    except BaseException:
        for gw in gateways:
            await gw.server.stop()
        raise
    return gateways, meters


async def run_meters(meters: Sequence[Meter]) -> None:
    """Change the simulated values every UPDATE_EVERY seconds until cancelled."""
    loop = asyncio.get_running_loop()
    last = loop.time()
    while True:
        await asyncio.sleep(UPDATE_EVERY)
        now = loop.time()
        for meter in meters:
            meter.step(now - last)
        last = now


# -- the broker -------------------------------------------------------------------------------


@dataclass
class BrokerChoice:
    host: str
    port: int
    protocol: str  # as written in the config: "5" or "3.1.1"
    description: str
    embedded: Any = None  # the amqtt Broker when we started one


async def port_accepts(host: str, port: int, timeout: float = 0.5) -> bool:
    """True when something accepts a TCP connection on host:port."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def quiet_amqtt() -> None:
    """amqtt logs every connection and state transition at INFO; keep only real trouble."""
    for name in ("amqtt", "transitions"):
        logging.getLogger(name).setLevel(logging.CRITICAL)


async def start_embedded_broker(host: str = "127.0.0.1", attempts: int = 3) -> tuple[Any, int]:
    """Start an amqtt broker on `host` and a free port; (broker, port).

    Raises ImportError when amqtt is not installed.
    """
    # The optional extra: imported here so the base install works without it.
    from amqtt.broker import Broker  # noqa: PLC0415

    quiet_amqtt()
    error: Exception | None = None
    for _ in range(attempts):  # the free port may be taken between probe and bind
        port = _free_port(host)
        config = {
            "listeners": {"default": {"type": "tcp", "bind": f"{host}:{port}"}},
            # No $SYS publisher, no packet logger: just anonymous access on loopback.
            "plugins": {
                "amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}
            },
        }
        broker = Broker(config)
        try:
            await broker.start()
        except Exception as exc:  # amqtt wraps bind errors in BrokerError
            error = exc
            continue
        return broker, port
    raise RuntimeError(f"the embedded MQTT broker did not start: {error}")


async def choose_broker(
    force_embedded: bool, given: tuple[str, int] | None = None
) -> BrokerChoice | str:
    """A broker to use (`given`, when given), or the reason there is none."""
    if given is not None:
        host, port = given
        if not await port_accepts(host, port, timeout=2.0):
            return f"nothing accepts connections on {host}:{port} (--broker)"
        return BrokerChoice(host, port, "5", f"the broker on {host}:{port} (--broker)")
    host, port = LOCAL_BROKER
    if not force_embedded and await port_accepts(host, port):
        return BrokerChoice(host, port, "5", f"the broker already running on {host}:{port}")
    try:
        broker, bound = await start_embedded_broker(host)
    except ImportError:
        if force_embedded:
            return f"{FORCE_EMBEDDED_ENV} asks for the embedded broker, but amqtt is not installed"
        return f"nothing accepts connections on {host}:{port}, and amqtt is not installed"
    return BrokerChoice(
        host, bound, "3.1.1", f"embedded amqtt broker on {host}:{bound} (MQTT 3.1.1)", broker
    )


async def stop_embedded_broker(broker: Any) -> None:
    await broker.shutdown()


# -- the configuration -----------------------------------------------------------------------


def build_config_text(gateways: Sequence[Gateway], broker: BrokerChoice, client_id: str) -> str:
    """The demo's configuration, as a user would write it."""
    lines = [
        "version: 1",
        "mqtt:",
        f"  host: {broker.host}",
        f"  port: {broker.port}",
        f"  client_id: {client_id}",
        f"  base_topic: {BASE_TOPIC}",
        f"  protocol: {broker.protocol}",
        "  qos: 1",
        "  retain: true",
        "  output: json",
        "hosts:",
    ]
    for gw in gateways:
        lines.append(
            f"  - {{name: {gw.name}, address: {gw.server.host}, port: {gw.server.port}, "
            "timeout: 1s}"
        )
    lines.append("templates:")
    lines.extend(METER_TEMPLATE.rstrip("\n").splitlines())
    lines.append("devices:")
    for gw in gateways:
        units = ", ".join(str(u) for u in gw.units)
        lines += [
            "  - name: meter-{unit}",
            f"    host: {gw.name}",
            f"    units: [{units}]",
            "    template: meter",
            f"    interval: {POLL_INTERVAL}",
        ]
    return "\n".join(lines) + "\n"


# -- the console -----------------------------------------------------------------------------


class Console:
    """Prints what arrives on MQTT under the base topic, one compact line per message."""

    def __init__(
        self,
        base: str,
        devices: Sequence[str],
        out: TextIO,
        on_closed: Callable[[], None] | None = None,
    ) -> None:
        self.prefix = base + "/"
        self.devices = set(devices)
        self.width = max((len(d) for d in devices), default=6)
        self.out = out
        self.live = False  # before the bridge starts, arrivals are retained leftovers
        self.printed = 0
        self.closed = False  # the reader of `out` went away (`demo | head`)
        self._on_closed = on_closed

    async def on_message(self, message: Incoming) -> None:
        if not self.live:
            return
        line = self.format(message.topic, message.payload)
        if line is not None:
            self.emit(line)

    def emit(self, text: str) -> None:
        """Print one line. When the reader has left (`demo | head`), the demo stops as on
        Ctrl-C, clearing what it retained, instead of a traceback for every message."""
        if self.closed:
            return
        try:
            print(f"{time.strftime('%H:%M:%S')}  {text}", file=self.out, flush=True)
        except BrokenPipeError:
            self.closed = True
            # What is still buffered for the closed pipe would fail again at exit.
            with contextlib.suppress(OSError, ValueError):
                os.dup2(os.open(os.devnull, os.O_WRONLY), self.out.fileno())
            if self._on_closed is not None:
                self._on_closed()
            return
        self.printed += 1

    def format(self, topic: str, payload: bytes) -> str | None:
        if not topic.startswith(self.prefix) or not payload:
            return None
        levels = topic[len(self.prefix) :].split("/")
        text = payload.decode("utf-8", errors="replace")
        if levels == ["bridge", "state"]:
            return f"{'bridge':<{self.width}}  {text}"
        name = levels[0]
        if name not in self.devices:
            return None
        if len(levels) == 2 and levels[1] == "availability":
            return f"{name:<{self.width}}  is {text}"
        if levels[1:] == ["set", "result"]:
            return f"{name:<{self.width}}  answer {text}"
        if len(levels) == 1:
            try:
                doc = json.loads(text)
            except ValueError:
                return f"{name:<{self.width}}  {text}"
            if isinstance(doc, dict):
                doc.pop("last_seen", None)
            return f"{name:<{self.width}}  {json.dumps(doc, ensure_ascii=False)}"
        return None


def banner(gateways: Sequence[Gateway], broker: BrokerChoice, devices: int, duration: float) -> str:
    hosts = "\n".join(
        f"            {gw.name} 127.0.0.1:{gw.server.port}  units "
        + ", ".join(str(u) for u in gw.units)
        for gw in gateways
    )
    until = f"runs for {duration:g} s (or Ctrl-C)" if duration > 0 else "Ctrl-C"
    return (
        f"modbus-bridge demo: {devices} simulated meters on {len(gateways)} Modbus TCP "
        "gateways, bridged to MQTT\n"
        f"  Modbus    simulated gateways (meter-N is unit N):\n{hosts}\n"
        f"  MQTT      {broker.description}\n"
        f"  topics    {BASE_TOPIC}/<device>               JSON state, retained\n"
        f"            {BASE_TOPIC}/<device>/availability  online | offline\n"
        f"            {BASE_TOPIC}/bridge/state           online | offline\n"
        f"  watch     mosquitto_sub -h {broker.host} -p {broker.port} -t '{BASE_TOPIC}/#' -v\n"
        f"  write     mosquitto_pub -h {broker.host} -p {broker.port} "
        f"-t {BASE_TOPIC}/meter-1/relay/set -m off\n"
        f"            mosquitto_pub -h {broker.host} -p {broker.port} "
        f'-t {BASE_TOPIC}/meter-1/set -m \'{{"mode": "manual", "relay": true}}\'\n'
        f"            (writable: mode off|auto|manual, relay true|false; answers are printed)\n"
        f"  stop      {until}; the retained topics under {BASE_TOPIC}/ are cleared on exit\n"
    )


# -- running it ------------------------------------------------------------------------------


def retained_topics(topics: Topics, devices: Sequence[str]) -> list[str]:
    """What the demo's bridge leaves retained on the broker (JSON output): the devices'
    state and availability, the bridge's state, health, info and devices."""
    out = [topics.bridge_state, topics.bridge_health, topics.bridge_info, topics.bridge_devices]
    for name in devices:
        out += [topics.state(name), topics.availability(name)]
    return out


async def clear_retained(link: MqttLink, topics: Sequence[str], timeout: float = 3.0) -> int:
    """Publish an empty retained message on each topic (which removes what the broker
    keeps there); the number cleared."""
    sent = await asyncio.gather(
        *(link.publish_now(t, b"", retain=True, timeout=timeout) for t in topics)
    )
    return sum(sent)


async def _demo_run(
    *,
    devices: int,
    duration: float,
    out: TextIO,
    err: TextIO,
    process: Process,
    broker_address: tuple[str, int] | None = None,
    print_config: bool = False,
) -> int:
    force_embedded = os.environ.get(FORCE_EMBEDDED_ENV, "").strip().lower() in (
        "1",
        "true",
        "yes",
        "on",
    )
    rng = random.Random()
    gateways, meters = await start_gateways(devices, rng)
    meter_task: asyncio.Task[None] | None = None
    broker: BrokerChoice | None = None
    console_task: asyncio.Task[None] | None = None
    console_link: MqttLink | None = None
    bridge: Bridge | None = None
    try:
        meter_task = asyncio.create_task(run_meters(meters), name="demo-meters")
        choice = await choose_broker(force_embedded, broker_address)
        if isinstance(choice, str):
            print(NO_BROKER_HELP.format(reason=choice), file=err, end="", flush=True)
            return EXIT_FAILURE
        broker = choice

        suffix = os.getpid()
        text = build_config_text(gateways, broker, f"modbus-bridge-demo-{suffix}")
        try:
            config = parse_config(text, source="<demo config>", env={})
        except ConfigError as exc:  # a bug in this module, not the user's doing
            print(f"demo: the generated configuration is invalid:\n{exc}", file=err)
            return EXIT_FAILURE
        if print_config:
            print(f"# the demo's configuration\n{text}", file=out, flush=True)
        console = Console(
            BASE_TOPIC, [d.name for d in config.devices], out, on_closed=process.stop.set
        )
        console_settings = dataclasses.replace(
            config.mqtt, client_id=f"modbus-bridge-demo-console-{suffix}"
        )
        console_link = MqttLink(
            console_settings,
            Topics(CONSOLE_BASE),
            on_message=console.on_message,
            subscriptions=(Subscription(f"{BASE_TOPIC}/#"),),
            backoff_max=2.0,
        )
        print(banner(gateways, broker, devices, duration), file=out, flush=True)
        console_task = asyncio.create_task(console_link.run(), name="demo-console")
        if not await console_link.wait_connected(CONNECT_WAIT):
            print(
                f"demo: cannot speak MQTT with {broker.description} (does it need a password, "
                f"or refuse MQTT {broker.protocol}?). Set {FORCE_EMBEDDED_ENV}=1 to use the "
                "embedded broker instead.",
                file=err,
                flush=True,
            )
            return EXIT_FAILURE
        # Retained messages of an earlier run arrive right after the subscription: skip them.
        await asyncio.sleep(RETAINED_SETTLE)
        console.live = True

        bridge = Bridge(config)
        await bridge.start()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.stop.wait(), duration if duration > 0 else None)
        print("", file=out, flush=True)
        console.emit("stopping: the bridge publishes offline, then everything shuts down")
        return EXIT_OK
    finally:
        process.shutting_down()
        if bridge is not None:
            await bounded(bridge.shutdown(), 5.0, "demo: bridge shutdown")
        if console_link is not None:
            if console_link.connected:
                await asyncio.sleep(RETAINED_SETTLE)  # let the offline messages print
                # Leave nothing behind: what the bridge retained, and the console
                # connection's own status message.
                names = [] if bridge is None else [d.name for d in bridge.config.devices]
                topics = retained_topics(Topics(BASE_TOPIC), names)
                await clear_retained(console_link, [*topics, console_link.topics.bridge_state])
            await cancel(console_task, 1.0, "demo: console disconnect")
        await cancel(meter_task, 0.5, "demo: meter simulation")
        if broker is not None and broker.embedded is not None:
            await bounded(stop_embedded_broker(broker.embedded), 2.0, "demo: embedded broker")
        for gw in gateways:
            await bounded(gw.server.stop(), 1.0, f"demo: simulated gateway {gw.name}")


def run_demo(
    *,
    devices: int = 6,
    duration: float = 0.0,
    broker: str | None = None,
    print_config: bool = False,
) -> int:
    """Run the demo; the process exit code."""
    if not 1 <= devices <= MAX_DEVICES:
        print(f"demo: --devices must be 1..{MAX_DEVICES}, got {devices}", file=sys.stderr)
        return EXIT_USAGE
    if duration < 0 or not math.isfinite(duration):
        print(
            f"demo: --duration must be 0 (until Ctrl-C) or more, got {duration:g}", file=sys.stderr
        )
        return EXIT_USAGE
    address: tuple[str, int] | None = None
    if broker is not None:
        try:
            address = parse_endpoint(broker, default_port=1883)
        except ValueError as exc:
            print(f"demo: --broker {exc}", file=sys.stderr)
            return EXIT_USAGE
    process = Process(hard_exit_after=HARD_EXIT_AFTER, force_on_second_signal=True)

    async def main(process: Process) -> int:
        return await _demo_run(
            devices=devices,
            duration=duration,
            out=sys.stdout,
            err=sys.stderr,
            process=process,
            broker_address=address,
            print_config=print_config,
        )

    return run_main(main, process)
