"""`modbus-bridge sim -c FILE`: every device of a configuration, simulated.

Something to point `run` (and write commands) at before the hardware is there. Each host
of the configuration becomes a `bridge.sim.SimServer` (Modbus TCP, or RTU framing for a
`framer: rtu` gateway) on loopback, or a `bridge.sim.SimPty` (a pseudo-terminal standing
in for a serial port); each device is a unit there, on its configured unit id. Every
point is readable and holds a plausible value for its type, unit and range; read-only
values move every second (measurements wander, counters count, bools and labels change
now and then); a writable point keeps what is written (a point read from one place and
written to another, `write_table`/`write_address`, shows the written value at once, as a
device that mirrors its command would).

TCP hosts listen on `--bind` (default 127.0.0.1) at their configured port plus
`--port-offset` (the next free one when two hosts would share a port). `--write-config`
writes the configuration with each host pointed at its simulator, for `run`.

A point with a `scale_factor` is served as a device would: its scale factor register
holds a fixed sf (`scale_factors`: the finest one, -3..3, at which the typical values of
the points it scales fit their registers), and the value is stored as raw * 10^sf.

Pure parts (`assign_ports`, `initial_value`, `next_value`, `store`, `scale_factors`)
first, the servers after.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import math
import random
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TextIO

from bridge.codec import (
    CodecError,
    apply_bit,
    decode_point,
    encode_point,
    int_range,
    scaled_by,
)
from bridge.model import BridgeConfig, DataType, Device, Host, Point, SerialLink, StateClass, Table
from bridge.payloads import Value
from bridge.process import EXIT_FAILURE, EXIT_OK, Process, bounded, cancel
from bridge.sim import SimPty, SimServer, SimUnit, WriteHook

log = logging.getLogger("bridge.simulate")

TICK = 1.0  # seconds between value changes
MAX_PORT = 65535
_FLOAT32_MAX = 3.4028234663852886e38

# Typical values by engineering unit: what a meter, sensor or drive would show.
# fmt: off
TYPICAL: Mapping[str, float] = {
    "V": 230.0, "kV": 20.0, "mV": 500.0, "A": 5.0, "mA": 12.0, "W": 1500.0, "kW": 1.5,
    "MW": 1.2, "VA": 1600.0, "kVA": 1.6, "var": 200.0, "kvar": 0.2, "Hz": 50.0, "%": 50.0,
    "°C": 21.0, "°F": 70.0, "K": 294.0, "bar": 1.5, "mbar": 1013.0, "hPa": 1013.0,
    "Pa": 101325.0, "kPa": 101.3, "psi": 22.0, "L/min": 12.0, "m³/h": 1.2, "rpm": 1450.0,
    "ppm": 600.0, "lx": 300.0, "m/s": 3.0, "s": 60.0, "min": 30.0, "h": 1000.0,
    "kWh": 12345.0, "Wh": 1234567.0, "MWh": 12.3, "m³": 1234.0, "L": 5000.0,
}
# fmt: on
COUNTING_UNITS = frozenset({"kWh", "Wh", "MWh", "GWh", "kvarh", "varh", "m³", "L", "gal", "ft³"})
MEASUREMENT_SPREAD = 0.01  # a measurement wanders by about 1 % of its typical value a tick


# --------------------------------------------------------------------------- pure parts


def assign_ports(hosts: Iterable[Host], offset: int) -> dict[str, int]:
    """The port each TCP host is simulated on: its own plus `offset`, or the next one
    above that no earlier host took (two gateways on different addresses both use 502).
    Raises ValueError when a port would pass 65535."""
    used: set[int] = set()
    ports: dict[str, int] = {}
    for host in hosts:
        if isinstance(host.link, SerialLink):
            continue
        port = host.link.port + offset
        while port in used:
            port += 1
        if not 1 <= port <= MAX_PORT:
            raise ValueError(
                f"host {host.name}: port {host.link.port} + offset {offset} = {port} is "
                f"outside 1..{MAX_PORT}"
            )
        used.add(port)
        ports[host.name] = port
    return ports


def value_range(p: Point) -> tuple[float, float]:
    """The engineering values a numeric point can take: its `min`/`max`, within what its
    type holds after scale and offset."""
    raw = int_range(p.type)
    if raw is not None:
        a, b = raw[0] * p.scale + p.offset, raw[1] * p.scale + p.offset
        lo, hi = min(a, b), max(a, b)
    else:
        limit = _FLOAT32_MAX if p.type is DataType.FLOAT32 else sys.float_info.max
        lo, hi = -limit, limit
    if p.minimum is not None:
        lo = max(lo, p.minimum)
    if p.maximum is not None:
        hi = min(hi, p.maximum)
    return lo, hi


def _counting(p: Point) -> bool:
    return p.state_class in (StateClass.TOTAL, StateClass.TOTAL_INCREASING) or (
        p.unit in COUNTING_UNITS
    )


def _typical(p: Point) -> float:
    lo, hi = value_range(p)
    if p.unit is not None and p.unit in TYPICAL:
        want = TYPICAL[p.unit]
    elif p.minimum is not None and p.maximum is not None:
        want = (p.minimum + p.maximum) / 2
    else:
        want = 100.0 if not p.type.is_float else 42.5
    return min(max(want, lo), hi)


def _resolution(p: Point) -> float:
    """The smallest change the point can show."""
    step = 0.0 if p.type.is_float else abs(p.scale)
    if p.precision is not None:
        step = max(step, 10.0**-p.precision)
    return step


def _fit(p: Point, value: float) -> int | float:
    """`value` within the point's range, on its resolution (what it can hold)."""
    lo, hi = value_range(p)
    value = min(max(value, lo), hi)
    if p.type.is_float:
        digits = p.precision if p.precision is not None else 3
        return round(value, digits)
    raw = round((value - p.offset) / p.scale)
    fitted = raw * p.scale + p.offset
    if fitted < lo or fitted > hi:  # rounding crossed a limit: one step back inside
        raw += -1 if fitted > hi else 1
        fitted = raw * p.scale + p.offset
    if p.scale == 1 and p.offset == 0:
        return int(raw)
    return round(fitted, 12)


def initial_value(p: Point, device: Device, rng: random.Random) -> Value:
    """A plausible first value of `p`, in engineering units."""
    if p.values:
        return p.values[0][1]
    if p.table.is_bits or p.bit is not None or p.type is DataType.BOOL:
        return rng.random() < 0.5
    if p.type is DataType.STRING:
        text = f"SIM {device.name}"
        return text[: 2 * p.length].strip()
    spread = 0.0 if _counting(p) else MEASUREMENT_SPREAD * abs(_typical(p))
    return _fit(p, _typical(p) + rng.uniform(-spread, spread))


def next_value(p: Point, value: Value, rng: random.Random, seconds: float = TICK) -> Value:
    """The value of a read-only point `seconds` later: a measurement wanders around its
    typical value, a counter counts up, a bool or a label changes now and then, text
    stays."""
    if p.values:
        if rng.random() < 0.02 * seconds and len(p.values) > 1:
            return rng.choice([label for _, label in p.values if label != value])
        return value
    if isinstance(value, bool):
        return (not value) if rng.random() < 0.05 * seconds else value
    if not isinstance(value, int | float):
        return value
    typical = _typical(p)
    if _counting(p):
        step = max(_resolution(p), abs(typical) * 1e-4) * seconds * rng.uniform(0.5, 1.5)
        return _fit(p, value + step)
    spread = max(_resolution(p), MEASUREMENT_SPREAD * abs(typical) or 0.5)
    drift = rng.gauss(0.0, spread) * math.sqrt(seconds) + (typical - value) * 0.1
    return _fit(p, value + drift)


def store(unit: SimUnit, p: Point, value: Value) -> None:
    """Put the engineering `value` into the unit's registers or bits, as the device would
    hold it (`bridge.codec` encodes it like a write command would). A bit point changes
    only its bit."""
    encoded = encode_point(p, value)
    if isinstance(encoded, bool):
        if p.table.is_bits:
            unit.set_bits(p.table.value, p.address, [encoded])
            return
        if p.bit is not None:
            [register] = unit.get_registers(p.table.value, p.address)
            changed = apply_bit(register, p.bit, encoded, byte_order=p.byte_order)
            unit.set_registers(p.table.value, p.address, [changed])
            return
        encoded = [1 if encoded else 0]
    unit.set_registers(p.table.value, p.address, encoded)


def read(unit: SimUnit, p: Point) -> Value:
    """The point's value as the unit holds it now (as the bridge would decode it)."""
    if p.table.is_bits:
        return decode_point(p, unit.get_bits(p.table.value, p.address, p.count))
    return decode_point(p, unit.get_registers(p.table.value, p.address, p.count))


SIM_SCALE_FACTORS = range(-3, 4)  # the sf a simulated scale factor register may hold


def scale_factors(device: Device) -> dict[str, int]:
    """The sf each scale factor point of `device` holds in the simulator: the finest one
    at which twice the typical value of every point it scales fits its register."""
    out: dict[str, int] = {}
    users: dict[str, list[Point]] = {}
    for p in device.points:
        if p.scale_factor is not None and device.point(p.scale_factor) is not None:
            users.setdefault(p.scale_factor, []).append(p)
    for name, points in users.items():
        out[name] = SIM_SCALE_FACTORS[-1]
        for sf in SIM_SCALE_FACTORS:
            if all(_fits(scaled_by(p, sf)) for p in points):
                out[name] = sf
                break
    return out


def _fits(p: Point) -> bool:
    raw = int_range(p.type)
    if raw is None:
        return True
    typical = 2 * _typical(replace(p, minimum=None, maximum=None))
    want = (typical - p.offset) / p.scale
    return raw[0] <= want <= raw[1]


def with_scale_factors(device: Device, sfs: Mapping[str, int]) -> tuple[Point, ...]:
    """The points of `device` as the simulator serves them: a scaled point as if its
    scale were scale * 10^sf, sf its scale factor point's simulated value."""
    return tuple(
        scaled_by(p, sfs[p.scale_factor])
        if p.scale_factor is not None and p.scale_factor in sfs
        else p
        for p in device.points
    )


def _write_place(p: Point) -> tuple[Table, int]:
    table = p.write_table or (Table.COIL if p.table is Table.COIL else Table.HOLDING)
    return table, p.address if p.write_address is None else p.write_address


def mirrored(p: Point) -> bool:
    """A writable point read from one place and written to another."""
    return p.writable and _write_place(p) != (p.table, p.address)


# --------------------------------------------------------------------------- the simulator


@dataclass
class _Unit:
    """One simulated unit id: its banks and the points of the devices on it."""

    unit: SimUnit
    moving: list[tuple[Point, Value]] = field(default_factory=list)  # read-only points
    mirrors: list[Point] = field(default_factory=list)


@dataclass
class SimHost:
    host: Host
    devices: tuple[Device, ...]
    server: SimServer
    port: int | None = None  # TCP: where it listens
    pty: SimPty | None = None  # serial: the pseudo-terminal standing in for the port

    @property
    def where(self) -> str:
        if self.pty is not None:
            return self.pty.path
        return f"{_show_host(self.server.host)}:{self.server.port}"


def _show_host(address: str) -> str:
    return f"[{address}]" if ":" in address else address


class SimFleet:
    """Every host and device of a configuration, simulated (not yet listening)."""

    def __init__(
        self,
        config: BridgeConfig,
        *,
        bind: str = "127.0.0.1",
        port_offset: int = 0,
        seed: int | None = None,
    ) -> None:
        self.config = config
        self.bind = bind
        self.rng = random.Random(seed)
        ports = assign_ports(config.hosts, port_offset)
        self.hosts: list[SimHost] = []
        self._units: dict[tuple[str, int], _Unit] = {}
        for host in config.hosts:
            devices = config.devices_on(host.name)
            if not devices:
                continue
            units = {d.unit: self._unit(host.name, d) for d in devices}
            framing = "rtu" if host.rtu else "tcp"
            server = SimServer(
                {uid: u.unit for uid, u in units.items()},
                host=bind,
                port=ports.get(host.name, 0),
                framing=framing,
            )
            server.write_hook = self._mirror_hook(host.name)
            serial = isinstance(host.link, SerialLink)
            self.hosts.append(
                SimHost(
                    host,
                    devices,
                    server,
                    port=None if serial else ports[host.name],
                    pty=SimPty(server) if serial else None,
                )
            )
        self._task: asyncio.Task[None] | None = None

    def _unit(self, host: str, device: Device) -> _Unit:
        """The unit of `device` (devices on one host and unit id share it), its points
        filled in: whole registers first, then bits, so bits of one register add up."""
        sim = self._units.get((host, device.unit))
        if sim is None:
            sim = self._units[(host, device.unit)] = _Unit(SimUnit())
        sfs = scale_factors(device)
        for p in sorted(with_scale_factors(device, sfs), key=lambda q: q.bit is not None):
            if p.name in sfs:  # a scale factor register holds still
                with contextlib.suppress(CodecError):
                    store(sim.unit, replace(p, scale=1.0, offset=0.0, values=()), sfs[p.name])
                continue
            value = initial_value(p, device, self.rng)
            try:
                store(sim.unit, p, value)
            except CodecError as exc:  # a value the point cannot hold: leave it at zero
                log.debug("sim: %s.%s: %s", device.name, p.name, exc.reason)
                continue
            if mirrored(p):
                sim.mirrors.append(p)
                table, address = _write_place(p)
                with contextlib.suppress(CodecError):
                    store(sim.unit, _at(p, table, address), value)
            elif not p.writable:
                sim.moving.append((p, value))
        return sim

    def _mirror_hook(self, host: str) -> WriteHook:
        def hook(unit_id: int, table: str, address: int, count: int) -> None:
            sim = self._units.get((host, unit_id))
            if sim is None:
                return
            bits = table == "coils"
            for p in sim.mirrors:
                wtable, waddress = _write_place(p)
                if wtable.is_bits != bits:
                    continue
                width = 1 if wtable.is_bits else _at(p, wtable, waddress).count
                if waddress < address + count and address < waddress + width:
                    value = read(sim.unit, _at(p, wtable, waddress))
                    with contextlib.suppress(CodecError):
                        store(sim.unit, p, value)

        return hook

    @property
    def devices(self) -> int:
        return sum(len(h.devices) for h in self.hosts)

    async def start(self) -> None:
        """Listen on every port and open every pseudo-terminal; raises OSError (with the
        host named in the message) when one cannot be opened, after closing the rest."""
        try:
            for sim in self.hosts:
                if sim.pty is not None:
                    await sim.pty.start()
                    continue
                try:
                    await sim.server.start()
                except OSError as exc:
                    raise OSError(exc.errno, _bind_problem(sim, self.bind, exc)) from None
        except BaseException:
            await self.stop()
            raise
        self._task = asyncio.create_task(self._move(), name="sim-values")

    async def stop(self) -> None:
        await cancel(self._task, 1.0, "sim: values")
        self._task = None
        for sim in self.hosts:
            if sim.pty is not None:
                await bounded(sim.pty.stop(), 1.0, f"sim: {sim.host.name}")
            await bounded(sim.server.stop(), 1.0, f"sim: {sim.host.name}")

    def tick(self, seconds: float = TICK) -> None:
        """Move every read-only value once."""
        for sim in self._units.values():
            for i, (p, value) in enumerate(sim.moving):
                new = next_value(p, value, self.rng, seconds)
                if new != value:
                    try:
                        store(sim.unit, p, new)
                    except CodecError:
                        continue
                    sim.moving[i] = (p, new)

    async def _move(self) -> None:
        while True:
            await asyncio.sleep(TICK)
            self.tick()


def _at(p: Point, table: Table, address: int) -> Point:
    """`p` as read from another table and address (where it is written)."""
    dtype = DataType.BOOL if table.is_bits else p.type
    return replace(p, table=table, address=address, type=dtype, write_table=None)


def _bind_problem(sim: SimHost, bind: str, exc: OSError) -> str:
    where = f"{_show_host(bind)}:{sim.port}"
    if exc.errno == errno.EACCES:
        why = "permission denied: ports below 1024 need root"
    elif exc.errno == errno.EADDRINUSE:
        why = "the port is in use (a real gateway, or another simulator?)"
    elif exc.errno == errno.EADDRNOTAVAIL:
        why = f"{bind} is not an address of this machine"
    else:
        why = exc.strerror or str(exc)
    return (
        f"host {sim.host.name}: cannot listen on {where}: {why}; choose other ports with "
        "--port-offset (e.g. --port-offset 10000)"
    )


# --------------------------------------------------------------------------- the command


def banner(fleet: SimFleet, source: str, written: str | None, duration: float) -> str:
    lines = [
        f"modbus-bridge sim: {len(fleet.hosts)} hosts, {fleet.devices} devices of {source}, "
        "simulated"
    ]
    width = max((len(s.host.name) for s in fleet.hosts), default=4)
    for sim in fleet.hosts:
        units = ", ".join(f"{d.unit} {d.name}" for d in sim.devices[:6])
        more = f" and {len(sim.devices) - 6} more" if len(sim.devices) > 6 else ""
        kind = "RTU" if sim.host.rtu else "Modbus TCP"
        lines.append(
            f"  {sim.host.name:<{width}}  {sim.where:<21} {kind} (configured "
            f"{sim.host.describe()}): units {units}{more}"
        )
    lines.append(
        "  values    read-only points move every second; writable points keep what is written"
    )
    sunspec = [d.name for sim in fleet.hosts for d in sim.devices if d.sunspec]
    if sunspec:
        more = f" and {len(sunspec) - 6} more" if len(sunspec) > 6 else ""
        lines.append(
            f"  SunSpec   not simulated: {', '.join(sunspec[:6])}{more} (sunspec: true) serve"
            " only the points listed under the device, no model chain; the bridge finds no"
            " SunS marker there"
        )
    if written is not None:
        lines.append(f"  run       modbus-bridge run -c {written}   (the hosts point here)")
    elif fleet_is_as_configured(fleet):
        lines.append(f"  run       modbus-bridge run -c {source}")
    else:
        lines.append(
            "  run       add --write-config FILE for a configuration that points here, then "
            "modbus-bridge run -c FILE"
        )
    until = f"runs for {duration:g} s (or Ctrl-C)" if duration > 0 else "Ctrl-C"
    lines.append(f"  stop      {until}")
    return "\n".join(lines)


def fleet_is_as_configured(fleet: SimFleet) -> bool:
    """The bridge reaches every simulated host with the configuration as it is."""
    for sim in fleet.hosts:
        link = sim.host.link
        if isinstance(link, SerialLink) or sim.port != link.port:
            return False
        if link.address not in (fleet.bind, "localhost") and fleet.bind not in ("0.0.0.0", "::"):
            return False
    return True


def targets(fleet: SimFleet) -> dict[str, dict[str, str | int]]:
    """Per host, what the configuration must say to reach its simulator."""
    address = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(fleet.bind, fleet.bind)
    out: dict[str, dict[str, str | int]] = {}
    for sim in fleet.hosts:
        if sim.pty is not None:
            out[sim.host.name] = {"serial": sim.pty.path}
        else:
            assert sim.port is not None
            out[sim.host.name] = {"address": address, "port": sim.port}
    return out


async def serve(
    fleet: SimFleet,
    *,
    source: str,
    text: str,
    write_config: str | None,
    duration: float,
    out: TextIO,
    err: TextIO,
    process: Process,
) -> int:
    """Run the simulator until stopped; the exit code."""
    from bridge.config import retarget  # noqa: PLC0415 - the YAML writer, only here

    try:
        await fleet.start()
    except OSError as exc:
        print(f"sim: {exc.strerror or exc}", file=err, flush=True)
        return EXIT_FAILURE
    try:
        if write_config is not None:
            try:
                written = retarget(text, source, targets(fleet))
                await asyncio.to_thread(_write_file, write_config, written)
            except OSError as exc:
                print(f"sim: cannot write {write_config}: {exc.strerror}", file=err, flush=True)
                return EXIT_FAILURE
        print(banner(fleet, source, write_config, duration), file=out, flush=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(process.stop.wait(), duration if duration > 0 else None)
        return EXIT_OK
    finally:
        process.shutting_down()
        await fleet.stop()


def _write_file(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
