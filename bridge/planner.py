"""Read planning: a device's points compiled once into a fixed list of block reads.

Pure: no I/O and no pymodbus.

`plan_device` groups a device's points by (table, interval) and, per group,
walks them in address order, merging a point into the current block when

- it overlaps or touches the block, or the hole before it is at most
  `device.max_gap` registers. For coil/discrete tables the hole is counted in
  bits and may be up to `max_gap * 16` bits (the same number of bytes on the
  wire as `max_gap` registers);
- and the block would still be at most `table.max_count` long (125 registers,
  2000 bits), or the device's `max_read` registers. A point is never split: one
  that would cross the cap starts a new block.

Blocks come out ordered by (table, interval, start); points sharing an
address range (several `bit` points of one register) share the block. Each
block carries its per-point offsets and compiled decoders, so `decode_block`
does only slicing and decoding per poll.

Scale factors (a point's `scale_factor`, the name of another point): a point and
its scale factor point are read in one block. Every interval that has a scaled
point reads its scale factor point too (a copy at that interval when its own
differs), and a scale factor point with the points it scales is placed as one
piece: holes inside it are bridged whatever `max_gap` says. Only a piece longer
than one read (or split by a range the device refuses) is planned point by point;
then the scale factor comes from an earlier block of the same poll, or from the
newest one read (`decode_block`'s `scales`, kept per poll group by the scheduler).

`host_load` estimates, for `check`, how busy each host's serial bus would be.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from bridge.codec import (
    CodecError,
    Data,
    Decoder,
    ScaledDecoder,
    Value,
    compile_decoder,
    scale_factor_reader,
)
from bridge.model import BridgeConfig, Device, Host, Point, Table

_TABLE_ORDER = {table: i for i, table in enumerate(Table)}

# A fleet shares its points (devices made from one template share the very objects):
# each point's decoder is compiled once, however many devices and blocks use it.
_decoder = functools.lru_cache(maxsize=None)(compile_decoder)
_scaled_decoder = functools.lru_cache(maxsize=None)(ScaledDecoder)
_sf_reader = functools.lru_cache(maxsize=None)(scale_factor_reader)


class PlanError(ValueError):
    """A device whose points cannot be read with the planned requests."""


@dataclass(frozen=True)
class ReadBlock:
    """One read request, repeated every `interval` seconds.

    `points` are the points it serves, each fully inside start..start+count-1,
    in address order. `scale_names` are the device's scale factor points (the
    names some point's `scale_factor` gives). `slices` is derived: (name,
    first, last + 1, decoder) per point without a scale factor, offsets
    relative to `start`; `scaled` the same with the scale factor's name for
    those with one; `scale_slices` the raw int16 reader of each scale factor
    point in the block.
    """

    unit: int
    table: Table
    start: int
    count: int
    interval: float
    points: tuple[Point, ...]
    scale_names: frozenset[str] = frozenset()
    slices: tuple[tuple[str, int, int, Decoder], ...] = field(init=False, repr=False, compare=False)
    scaled: tuple[tuple[str, int, int, ScaledDecoder, str], ...] = field(
        init=False, repr=False, compare=False
    )
    scale_slices: tuple[tuple[str, int, int, Decoder], ...] = field(
        init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        slices = []
        scaled = []
        scale_slices = []
        for p in self.points:
            if p.table is not self.table or p.address < self.start or p.end > self.end:
                raise PlanError(
                    f"point {p.name!r} ({p.table.value} {p.address}..{p.end - 1}) is outside "
                    f"the block {self.table.value} {self.start}..{self.end - 1}"
                )
            first, last = p.address - self.start, p.end - self.start
            if p.scale_factor is not None:
                scaled.append((p.name, first, last, _scaled_decoder(p), p.scale_factor))
            else:
                slices.append((p.name, first, last, _decoder(p)))
            if p.name in self.scale_names:
                scale_slices.append((p.name, first, last, _sf_reader(p)))
        object.__setattr__(self, "slices", tuple(slices))
        object.__setattr__(self, "scaled", tuple(scaled))
        object.__setattr__(self, "scale_slices", tuple(scale_slices))

    @property
    def end(self) -> int:
        """One past the last address read."""
        return self.start + self.count


def decode_block(
    block: ReadBlock, data: Data, scales: dict[str, Value] | None = None
) -> dict[str, Value]:
    """Decode one read of `block` to {point name: value}.

    `data` holds the registers or bits read from `block.start` on; it may be
    longer than `block.count` (bit reads come back padded to whole bytes).
    Raises `CodecError` when it is shorter.

    `scales` holds the newest value of each scale factor point: the block's own
    are stored there first, then its scaled points use them (a scale factor not
    known gives None).
    """
    if len(data) < block.count:
        raise CodecError(
            f"read of {block.table.value} {block.start}..{block.end - 1} returned "
            f"{len(data)} of {block.count} values"
        )
    out = {name: decode(data[first:last]) for name, first, last, decode in block.slices}
    if block.scaled or block.scale_slices:
        known = {} if scales is None else scales
        for name, first, last, read in block.scale_slices:
            known[name] = read(data[first:last])
        for name, first, last, scaled, sf in block.scaled:
            out[name] = scaled(data[first:last], known.get(sf))
    return out


def scale_names(device: Device) -> frozenset[str]:
    """The points of `device` that are another point's scale factor."""
    return frozenset(p.scale_factor for p in device.points if p.scale_factor is not None)


def with_scale_points(device: Device, points: Iterable[Point]) -> tuple[Point, ...]:
    """`points` and the scale factor points they need (a read of just these points)."""
    chosen = {p.name: p for p in points}
    for p in list(chosen.values()):
        if p.scale_factor is not None and p.scale_factor not in chosen:
            sf = device.point(p.scale_factor)
            if sf is not None:
                chosen[sf.name] = sf
    return tuple(chosen.values())


def _gap_limit(table: Table, max_gap: int) -> int:
    """Largest hole (in addresses of `table`) bridged inside one block."""
    return max(0, max_gap) * (16 if table.is_bits else 1)


def _plan_group(
    device: Device,
    table: Table,
    interval: float,
    points: Iterable[Point],
    avoid: Sequence[tuple[int, int]] = (),
) -> list[ReadBlock]:
    cap = table.max_count if table.is_bits else min(table.max_count, device.max_read)
    gap = _gap_limit(table, device.max_gap)
    names = scale_names(device)
    blocks: list[ReadBlock] = []
    members: list[Point] = []
    start = end = 0

    def flush() -> None:
        if members:
            block = ReadBlock(
                device.unit, table, start, end - start, interval, tuple(members), names
            )
            blocks.append(block)

    points = list(points)
    for p in points:
        if not 0 < p.count <= cap:
            raise PlanError(
                f"{device.name}: point {p.name!r} needs {p.count} {_unit_name(table)}, "
                f"a single read takes 1..{cap}"
            )
    for piece in _pieces(points, cap, avoid):
        p_start = piece[0].address
        p_end = max(p.end for p in piece)
        if (
            members
            and p_start - end <= gap
            and max(end, p_end) - start <= cap
            and not _touches(avoid, end, p_start)
        ):
            members.extend(piece)
            end = max(end, p_end)
        else:
            flush()
            members = list(piece)
            start, end = p_start, p_end
    flush()
    return blocks


def _pieces(
    points: Sequence[Point], cap: int, avoid: Sequence[tuple[int, int]]
) -> list[list[Point]]:
    """The points in address order, as pieces placed whole in one block: a scale factor
    point with the points it scales (when they fit one read and no avoided range lies
    between them), every other point alone."""
    by_name = {p.name: p for p in points}
    root: dict[str, str] = {}  # scaled point -> its scale factor point, when both are here
    for p in points:
        if p.scale_factor is not None and p.scale_factor in by_name:
            root[p.name] = p.scale_factor
    groups: dict[str, list[Point]] = {}
    for p in points:
        groups.setdefault(root.get(p.name, p.name), []).append(p)
    pieces: list[list[Point]] = []
    for group in groups.values():
        group.sort(key=lambda p: (p.address, p.end))
        lo, hi = group[0].address, max(p.end for p in group)
        if len(group) == 1 or (hi - lo <= cap and not _touches(avoid, lo, hi)):
            pieces.append(group)
        else:
            pieces.extend([p] for p in group)
    pieces.sort(key=lambda piece: (piece[0].address, max(p.end for p in piece)))
    return pieces


def _touches(avoid: Sequence[tuple[int, int]], start: int, end: int) -> bool:
    """Whether the hole start..end-1 overlaps any avoided range [a, b)."""
    return any(a < end and start < b for a, b in avoid)


def replan_block(
    device: Device,
    block: ReadBlock,
    *,
    drop: Iterable[str] = (),
    avoid: Sequence[tuple[int, int]] = (),
) -> list[ReadBlock]:
    """Re-plan the points of `block` without the points named in `drop`, never
    bridging a hole that overlaps an `avoid` range [start, end).

    Used when a device rejects a merged read (exception 2/3): the offending range
    is learned once and the remaining points keep being read in merged blocks.
    """
    dropped = set(drop)
    keep = [p for p in block.points if p.name not in dropped]
    return _plan_group(device, block.table, block.interval, keep, avoid)


def holes(block: ReadBlock) -> list[tuple[int, int]]:
    """Address ranges [start, end) inside `block` that no point of it uses."""
    out: list[tuple[int, int]] = []
    cursor = block.start
    for p in sorted(block.points, key=lambda p: p.address):
        if p.address > cursor:
            out.append((cursor, p.address))
        cursor = max(cursor, p.end)
    return out


def _unit_name(table: Table) -> str:
    return "bits" if table.is_bits else "registers"


def plan_device(device: Device) -> tuple[ReadBlock, ...]:
    """The fixed read plan of one device: blocks ordered by (table, interval, start).

    Raises `PlanError` for a point longer than a single read allows, and
    `CodecError` for a point whose decoder cannot be built (e.g. `bit` on a float).
    """
    groups: dict[tuple[Table, float], list[Point]] = {}
    for p in device.points:
        groups.setdefault((p.table, p.interval), []).append(p)
    # Every interval with a scaled point reads the scale factor point too.
    placed = {(p.name, p.interval) for p in device.points}
    for p in device.points:
        sf = device.point(p.scale_factor) if p.scale_factor is not None else None
        if sf is not None and (sf.name, p.interval) not in placed:
            placed.add((sf.name, p.interval))
            groups.setdefault((sf.table, p.interval), []).append(replace(sf, interval=p.interval))
    blocks: list[ReadBlock] = []
    for table, interval in sorted(groups, key=lambda key: (_TABLE_ORDER[key[0]], key[1])):
        blocks.extend(_plan_group(device, table, interval, groups[table, interval]))
    return tuple(blocks)


# --------------------------------------------------------------------------- bus load


def request_bus_seconds(
    table: Table, count: int, baudrate: int, pause: float = 0.0, char_bits: int = 11
) -> float:
    """Estimated seconds one read of `count` registers/bits holds an RS485 bus.

    Models Modbus RTU at `baudrate`, `char_bits` bits per character (11 when the
    framing is not known: start, 8 data, parity or second stop, stop):

    - request: 8 characters (unit, function, address, count, CRC);
    - response: 5 characters (unit, function, byte count, CRC) plus the data,
      2 per register or ceil(bits / 8);
    - a 3.5-character silent interval after each of the two frames;
    - plus `pause`, the host's configured wait between requests.

    Gateway and device turnaround times are not modelled, so this is a floor.
    """
    if baudrate <= 0:
        raise PlanError(f"baudrate must be positive, got {baudrate}")
    data = math.ceil(count / 8) if table.is_bits else 2 * count
    characters = 8 + (5 + data) + 2 * 3.5
    return characters * char_bits / baudrate + pause


@dataclass(frozen=True)
class HostLoad:
    """The planned polling load of one host, for `check`."""

    host: Host
    devices: tuple[Device, ...]
    blocks: tuple[ReadBlock, ...]
    requests_per_second: float
    bus_seconds_per_second: float
    overloaded: bool  # more bus time per second than there is: intervals cannot be kept


def host_load(
    host: Host,
    devices: Sequence[Device],
    blocks_by_device: Mapping[str, Sequence[ReadBlock]] | None = None,
) -> HostLoad:
    """Requests and bus time per second of polling `devices` through `host`.

    `blocks_by_device` maps device names to their plans; a device missing from
    it is planned here.
    """
    blocks: list[ReadBlock] = []
    requests = 0.0
    bus = 0.0
    baudrate = host.bus_baudrate
    for device in devices:
        if blocks_by_device is not None and device.name in blocks_by_device:
            planned: Sequence[ReadBlock] = blocks_by_device[device.name]
        else:
            planned = plan_device(device)
        for block in planned:
            rate = 1.0 / block.interval if block.interval > 0 else math.inf
            requests += rate
            if baudrate is not None:
                bus += rate * request_bus_seconds(
                    block.table, block.count, baudrate, host.pause, host.char_bits
                )
        blocks.extend(planned)
    return HostLoad(
        host=host,
        devices=tuple(devices),
        blocks=tuple(blocks),
        requests_per_second=requests,
        bus_seconds_per_second=bus,
        overloaded=bus > 1.0,
    )


def plan_summary(config: BridgeConfig) -> tuple[HostLoad, ...]:
    """`host_load` for every host of `config`, in configuration order."""
    return tuple(host_load(host, config.devices_on(host.name)) for host in config.hosts)
