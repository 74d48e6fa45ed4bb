"""Commissioning commands: `modbus-bridge read | write | scan`, for a device not yet in a
configuration (is unit 17 answering? which word order is this float?).

They use the daemon's own code: a `bridge.session.HostSession` (the same reply checks,
RTU framing and timing) and `bridge.codec` through `Point`s built from the options,
so what they show is what the bridge would read. Each command opens one connection (or
the serial port), makes its requests over it and closes it. Output goes to stdout, as
text or with `--json` as one JSON document; an error is one line on stderr and exit
code 1; a usage error exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from bridge import sunspec, sunspec_io
from bridge.codec import CodecError, decode_point, encode_point
from bridge.commands import plain_value
from bridge.config import parse_duration, parse_endpoint, parse_units
from bridge.errors import (
    EXCEPTION_NAMES,
    BadReply,
    ExceptionReply,
    HostUnavailable,
    ModbusRequestError,
    RequestTimeout,
)
from bridge.model import (
    DataType,
    Framer,
    Host,
    Order,
    Parity,
    Point,
    SerialLink,
    Table,
    TcpLink,
)
from bridge.payloads import Value
from bridge.process import EXIT_FAILURE, EXIT_OK, Process, bounded, run_main
from bridge.session import LINK_LOST, HostSession

READ_TIMEOUT = 1.0  # seconds per request: read and write
SCAN_TIMEOUT = 0.3  # seconds per unit id: most units answer within a few milliseconds
REOPEN_WAIT = 5.0  # seconds a scan waits for its link to reopen after a unit broke it
HARD_EXIT_AFTER = 3.0  # seconds after Ctrl-C
GATEWAY_NO_UNIT = frozenset({10, 11})  # gateway path unavailable / target failed: nobody there
ORDERS = tuple((b, w) for b in Order for w in Order)  # (byte order, word order)


class UsageError(Exception):
    """Options that do not make a request (exit 2)."""


class Failed(Exception):
    """The request could not be made or answered (one line, exit 1)."""


# -- options -> a host and points (pure) -----------------------------------------------


def build_host(args: argparse.Namespace) -> Host:
    """The host the command talks to, as the daemon's config would describe it."""
    timeout = args.timeout if args.timeout is not None else args.default_timeout
    serial_only = {
        "baudrate": args.baudrate,
        "parity": args.parity,
        "stopbits": args.stopbits,
        "bytesize": args.bytesize,
    }
    if args.serial is not None:
        if args.framer is not None:
            raise UsageError("--framer is for --host (a serial port always carries RTU)")
        link = SerialLink(
            port=args.serial,
            baudrate=args.baudrate or 9600,
            parity=Parity(args.parity or "N"),
            stopbits=args.stopbits or 1,
            bytesize=args.bytesize or 8,
        )
        return Host(name=args.serial, link=link, timeout=timeout, framer=Framer.RTU)
    given = [f"--{name}" for name, value in serial_only.items() if value is not None]
    if given:
        raise UsageError(f"{', '.join(given)}: only with --serial")
    try:
        address, port = parse_endpoint(args.host, default_port=502)
    except ValueError as exc:
        raise UsageError(f"--host {exc}") from None
    tcp = TcpLink(address, port)
    return Host(tcp.describe(), tcp, timeout=timeout, framer=Framer(args.framer or "tcp"))


def build_points(
    args: argparse.Namespace, byte_order: Order | None = None, word_order: Order | None = None
) -> list[Point]:
    """`--count` consecutive values of `--type` from `--address`, decoded (and encoded)
    like a configured point with the same keys."""
    table = Table(args.table)
    dtype = DataType(args.type) if args.type else (DataType.BOOL if table.is_bits else None)
    if dtype is None:
        dtype = DataType.UINT16
    if table.is_bits and dtype is not DataType.BOOL:
        raise UsageError(f"{table.value} holds bits: --type bool (or leave it out)")
    length = args.length or 0
    if dtype is DataType.STRING and not length:
        raise UsageError("--type string needs --length (registers, 2 characters each)")
    if length and dtype is not DataType.STRING:
        raise UsageError("--length is for --type string")
    numeric = dtype.is_numeric
    if (args.scale != 1.0 or args.offset != 0.0) and not numeric:
        raise UsageError(f"--scale and --offset need a numeric --type, not {dtype.value}")
    if args.scale == 0:
        raise UsageError("--scale must not be 0")
    width = 1 if table.is_bits else (length if dtype is DataType.STRING else dtype.width)
    count: int = getattr(args, "count", 1)  # `write` has no --count: one value
    span = width * count
    if span > table.max_count:
        raise UsageError(
            f"{span} {'bits' if table.is_bits else 'registers'} in one request: "
            f"at most {table.max_count}"
        )
    if args.address + span > 65536:
        raise UsageError(f"address {args.address} + {span} runs past 65535")
    return [
        Point(
            name=f"{table.value} {args.address + i * width}",
            table=table,
            address=args.address + i * width,
            type=dtype,
            interval=1.0,
            length=length,
            byte_order=byte_order or Order(args.byte_order),
            word_order=word_order or Order(args.word_order),
            scale=args.scale,
            offset=args.offset,
        )
        for i in range(count)
    ]


def _hex(values: Sequence[int] | Sequence[bool]) -> str:
    if values and isinstance(values[0], bool):
        return " ".join("1" if v else "0" for v in values)
    return f"{' '.join(f'0x{v:04X}' for v in values)}  ({' '.join(str(v) for v in values)})"


def _shown(value: Value) -> str:
    return "null" if value is None else json.dumps(value, ensure_ascii=False)


def decode_all(
    points: Sequence[Point], start: int, data: Sequence[int] | Sequence[bool]
) -> list[Value]:
    return [decode_point(p, data[p.address - start : p.end - start]) for p in points]


# -- the commands (I/O) ---------------------------------------------------------------


@dataclass
class _Run:
    """One command's connection: started, used, always stopped."""

    host: Host
    units: int = 1

    async def __call__(
        self, work: Callable[[HostSession], Awaitable[int]], process: Process
    ) -> int:
        session = HostSession(self.host, units=self.units)
        await session.start()
        job = asyncio.ensure_future(work(session))
        stop = asyncio.ensure_future(process.stop.wait())
        try:
            done, _ = await asyncio.wait({job, stop}, return_when=asyncio.FIRST_COMPLETED)
            if job not in done:
                job.cancel()
                raise Failed("interrupted")
            return job.result()
        except HostUnavailable as exc:
            raise Failed(session.open_error or str(exc)) from None
        except ModbusRequestError as exc:
            raise Failed(str(exc)) from None
        finally:
            stop.cancel()
            await bounded(session.stop(), 2.0, "closing the connection")


def _print_json(doc: dict[str, Any]) -> None:
    print(json.dumps(doc, ensure_ascii=False))


def _target(host: Host, unit: int) -> dict[str, Any]:
    return {"target": host.name, "unit": unit}


async def _read(args: argparse.Namespace, host: Host, session: HostSession) -> int:
    points = build_points(args)
    first, last = points[0], points[-1]
    data = await session.read(args.unit, first.table, first.address, last.end - first.address)
    orders = ORDERS if args.all_orders else ((Order(args.byte_order), Order(args.word_order)),)
    if first.table.is_bits:
        orders = orders[:1]  # bits have no byte or word order
    elif first.type.width == 1 or first.type is DataType.STRING:
        orders = tuple(o for o in orders if o[1] is Order(args.word_order))  # one word
    decoded = [(b, w, decode_all(build_points(args, b, w), first.address, data)) for b, w in orders]
    if args.json:
        doc = {
            **_target(host, args.unit),
            "table": first.table.value,
            "address": first.address,
            "type": first.type.value,
            "raw": list(data),
            "values": decoded[0][2],
        }
        if args.all_orders:
            doc["orders"] = [
                {"byte_order": b.value, "word_order": w.value, "values": v} for b, w, v in decoded
            ]
        _print_json(doc)
        return EXIT_OK
    what = ("bit" if first.table.is_bits else "register") + ("s" if len(data) != 1 else "")
    print(f"{host.name} unit {args.unit} {first.table.value} {first.address}, {len(data)} {what}:")
    print(f"  raw      {_hex(data)}")
    for b, w, values in decoded:
        shown = ", ".join(_shown(v) for v in values)
        order = "" if first.table.is_bits else f"   (byte order {b.value}, word order {w.value})"
        if first.type.width == 1 and not first.table.is_bits:
            order = f"   (byte order {b.value})"
        print(f"  {first.type.value:<8} {shown}{order}")
    return EXIT_OK


def plan_write(args: argparse.Namespace) -> tuple[Point, Value, list[int] | bool]:
    """The point, the value and what goes on the wire, checked before connecting."""
    [point] = build_points(args)
    if point.table in (Table.DISCRETE, Table.INPUT):
        raise UsageError(f"the {point.table.value} table is read-only: write coil or holding")
    try:  # the value as a command's plain payload reads it: one grammar (docs/commands.md)
        value = plain_value(point, args.value)
        return point, value, encode_point(point, value)
    except CodecError as exc:
        raise UsageError(exc.reason) from None


MAYBE = "the write may or may not have been applied"  # the words of the MQTT path


async def _write(args: argparse.Namespace, host: Host, session: HostSession) -> int:
    point, value, encoded = plan_write(args)
    raw: list[int] | list[bool]
    try:
        if isinstance(encoded, bool):
            await session.write_coil(args.unit, point.address, encoded, multiple=args.multiple)
            function, raw = (15 if args.multiple else 5), [encoded]
        else:
            multiple = args.multiple or len(encoded) > 1
            await session.write_registers(args.unit, point.address, encoded, multiple=multiple)
            function, raw = (16 if multiple else 6), encoded
    except (RequestTimeout, BadReply) as exc:
        # Sent, and no fitting answer: the device may have acted on it all the same.
        raise Failed(f"{exc}; {MAYBE}") from None
    except HostUnavailable as exc:
        if exc.reason == LINK_LOST:  # the connection died while the write was on the wire
            raise Failed(f"{exc} while the write was on the wire; {MAYBE}") from None
        raise
    if args.json:
        _print_json(
            {
                **_target(host, args.unit),
                "table": point.table.value,
                "address": point.address,
                "type": point.type.value,
                "value": value,
                "raw": raw,
                "function": function,
            }
        )
    else:
        print(
            f"{host.name} unit {args.unit} {point.table.value} {point.address}: wrote "
            f"{_shown(value)} as {_hex(raw)} (function {function})"
        )
    return EXIT_OK


async def _reopened(session: HostSession, timeout: float) -> None:
    """Until the session has its link again (it reopens by itself, after its backoff)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not session.connected and loop.time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)


async def _probe(session: HostSession, unit: int, table: Table, address: int) -> Any:
    """One unit's probe. A reply the link could not survive (garbage from the unit
    before) leaves it closed: then wait for it to reopen and ask this unit again, once."""
    try:
        return await session.read(unit, table, address, 1)
    except HostUnavailable:
        if session.generation == 0:
            raise  # never opened: the host is not there
        await _reopened(session, REOPEN_WAIT)
        return await session.read(unit, table, address, 1)


async def _scan(args: argparse.Namespace, host: Host, session: HostSession) -> int:
    table = Table(args.table)
    found: list[dict[str, Any]] = []
    error: str | None = None
    for unit in args.units:
        entry: dict[str, Any] = {"unit": unit}
        try:
            data = await _probe(session, unit, table, args.address)
        except HostUnavailable as exc:
            # The link is gone for good (the host went away): what was found so far
            # still counts, and is shown.
            error = session.open_error or str(exc)
            break
        except ExceptionReply as exc:
            if exc.code in GATEWAY_NO_UNIT:
                continue  # the gateway answers for a unit that is not there
            name = EXCEPTION_NAMES.get(exc.code, "unknown exception")
            entry.update(reply="exception", code=exc.code, text=f"exception {exc.code} ({name})")
        except RequestTimeout:
            continue
        except BadReply as exc:
            # Something answered, but not as unit `unit` would (noise, another unit):
            # reported, not counted.
            entry.update(reply="bad_reply", text=exc.reason)
        else:
            entry.update(
                reply="value",
                value=data[0],
                text=f"{table.value} {args.address} = {_shown(data[0])}",
            )
        found.append(entry)
        if not args.json:
            print(f"unit {unit}: {entry['text']}", flush=True)
    answered = [e["unit"] for e in found if e["reply"] != "bad_reply"]
    span = f"{args.units[0]}-{args.units[-1]}" if len(args.units) > 1 else str(args.units[0])
    if args.json:
        doc = {"target": host.name, "scanned": len(args.units), "answered": answered,
               "replies": found}  # fmt: skip
        if error is not None:
            doc["error"] = error
        _print_json(doc)
    else:
        print(
            f"{host.name}: {len(answered)} of {len(args.units)} unit ids in {span} answered "
            f"(probe: read {table.value} {args.address}, {host.timeout:g} s per unit)"
        )
    if error is not None:
        print(f"error: {error} (the scan stopped there)", file=sys.stderr)
        return EXIT_FAILURE
    if not answered:
        print(f"error: no unit id in {span} answered", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


async def _scan_sunspec(args: argparse.Namespace, host: Host, session: HostSession) -> int:
    """`scan --sunspec`: the unit's SunSpec model chain and what each model maps to."""
    chain = await sunspec_io.discover(session, args.unit)
    where = f"{host.name} unit {args.unit}"
    if chain is None:
        print(
            f"error: {where}: no SunSpec marker at 40000, 50000 or 0 (nor one register later)",
            file=sys.stderr,
        )
        if args.json:
            _print_json({"target": host.name, "unit": args.unit, "error": "no SunSpec marker"})
        return EXIT_FAILURE
    models = sunspec.describe(chain)
    info = sunspec.device_info(chain)
    if args.json:
        _print_json({"target": host.name, "unit": args.unit, "base": chain.base,
                     "device": {"manufacturer": info.manufacturer, "model": info.model,
                                "serial": info.serial, "version": info.version},
                     "models": models})  # fmt: skip
        return EXIT_OK
    print(f"{where}: SunSpec marker at {chain.base}, {len(models)} models")
    for m in models:
        standard = m["standard"]
        maps = (
            f"{len(m['points']) - len(standard)} points as {m['name']}_*"
            + (f"; standard names: {', '.join(standard)}" if standard else "")
            if m["known"]
            else f"not in the definitions: published raw as {m['name']}_r0..r{m['length'] - 1}"
        )
        print(
            f"  model {m['id']:<5} {m['label']:<40.40} at {m['address']:<5} "
            f"length {m['length']:<4} -> {maps}"
        )
    print(
        f"device: {info.manufacturer or '?'} {info.model or '?'}, serial {info.serial or '?'}, "
        f"version {info.version or '?'}"
    )
    return EXIT_OK


def run_command(args: argparse.Namespace) -> int:
    """`read`, `write` or `scan`: the process's exit code."""
    if args.log_level != "debug":  # the session's own lines (connected, unreachable)
        logging.getLogger("bridge").setLevel(logging.ERROR)
    sunspec_scan = args.command == "scan" and args.sunspec
    if sunspec_scan and args.timeout is None:
        args.default_timeout = READ_TIMEOUT  # one unit, reads of up to 125 registers
    try:
        host = build_host(args)
        if sunspec_scan:
            units = 1
        elif args.command == "scan":
            units = len(args.units) + 3  # the silence rule never recycles the socket
        elif args.command == "write":
            plan_write(args)  # usage errors before any connection
            units = 1
        else:
            build_points(args)
            units = 1
    except UsageError as exc:
        args.parser.error(str(exc))  # exits 2
    work = {"read": _read, "write": _write, "scan": _scan}[args.command]
    if sunspec_scan:
        work = _scan_sunspec
    run = _Run(host, units)

    async def main(process: Process) -> int:
        try:
            return await run(lambda session: work(args, host, session), process)
        except Failed as exc:
            print(f"error: {exc}", file=sys.stderr)
            if args.json:
                _print_json({"error": str(exc)})
            return EXIT_FAILURE

    return run_main(main, Process(hard_exit_after=HARD_EXIT_AFTER, force_on_second_signal=True))


# -- the command line -------------------------------------------------------------------


def _integer(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None


def _in(lo: int, hi: int) -> Callable[[str], int]:
    def check(text: str) -> int:
        value = _integer(text)
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"{value} is outside {lo}..{hi}")
        return value

    return check


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _float_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def _units(text: str) -> list[int]:
    try:
        return parse_units(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parsers(sub: Any) -> None:
    """The `read`, `write` and `scan` subcommands."""
    link = argparse.ArgumentParser(add_help=False)
    where = link.add_mutually_exclusive_group(required=True)
    where.add_argument("--host", metavar="ADDRESS[:PORT]", help="a Modbus TCP device or gateway")
    where.add_argument("--serial", metavar="PORT", help="a serial port (RS485 adapter)")
    link.add_argument(
        "--framer",
        choices=["tcp", "rtu"],
        help="--host: rtu for a gateway in transparent mode (default tcp)",
    )
    link.add_argument("--baudrate", type=_in(50, 4_000_000), help="--serial (default 9600)")
    link.add_argument("--parity", choices=["N", "E", "O"], help="--serial (default N)")
    link.add_argument("--stopbits", type=int, choices=[1, 2], help="--serial (default 1)")
    link.add_argument("--bytesize", type=int, choices=[7, 8], help="--serial (default 8)")
    link.add_argument("--timeout", type=_duration, help="per request, e.g. 500ms")
    link.add_argument("--json", action="store_true", help="one JSON document on stdout")

    value = argparse.ArgumentParser(add_help=False)
    value.add_argument("--unit", type=_in(0, 255), default=1, help="unit id (default 1)")
    value.add_argument(
        "--table",
        choices=[t.value for t in Table],
        default="holding",
        help="the Modbus table (default holding)",
    )
    value.add_argument(
        "--address",
        type=_in(0, 65535),
        required=True,
        help="0-based protocol address (register 40101 in 4xxxx numbering is holding 100)",
    )
    value.add_argument(
        "--type",
        choices=[t.value for t in DataType],
        help="default uint16 (bool for coil/discrete)",
    )
    value.add_argument("--length", type=_in(1, 125), help="registers of a string")
    value.add_argument(
        "--byte-order",
        choices=["big", "little"],
        default="big",
        help="byte order inside a register (default big)",
    )
    value.add_argument(
        "--word-order",
        choices=["big", "little"],
        default="big",
        help="register order of a 32/64-bit value (default big: the first is most significant)",
    )
    value.add_argument("--scale", type=_float_arg, default=1.0, help="value = raw * scale + offset")
    value.add_argument(
        "--offset", type=_float_arg, default=0.0, help="added after --scale (default 0)"
    )

    p_read = sub.add_parser(
        "read",
        parents=[link, value],
        help="read registers or bits and decode them (commissioning)",
        description="Read registers or bits from a device and print them raw and decoded.",
    )
    p_read.add_argument(
        "--count", type=_in(1, 2000), default=1, help="consecutive values of --type (default 1)"
    )
    p_read.add_argument(
        "--all-orders", action="store_true", help="decode in every byte and word order"
    )
    p_read.set_defaults(func=run_command, parser=p_read, default_timeout=READ_TIMEOUT)

    p_write = sub.add_parser(
        "write",
        parents=[link, value],
        help="write one value (engineering units with --scale)",
        description="Write one value to a register (function 6, or 16 for more than one "
        "register) or a coil (function 5), in engineering units.",
    )
    p_write.add_argument("value", help="a number, true/false, or text for --type string")
    p_write.add_argument(
        "--multiple", action="store_true", help="function 16 (15 for a coil) even for one register"
    )
    p_write.set_defaults(func=run_command, parser=p_write, default_timeout=READ_TIMEOUT)

    p_scan = sub.add_parser(
        "scan",
        parents=[link],
        help="list the unit ids that answer, over one connection",
        description="Probe unit ids with a one-register read and list those that answer.",
    )
    p_scan.add_argument(
        "--units",
        type=_units,
        default=list(range(1, 248)),
        help="e.g. 1-247 (the default) or 1,5,10-20",
    )
    p_scan.add_argument(
        "--table",
        choices=[t.value for t in Table],
        default="holding",
        help="what to probe (default holding)",
    )
    p_scan.add_argument(
        "--address", type=_in(0, 65535), default=0, help="the address to probe (default 0)"
    )
    p_scan.add_argument(
        "--sunspec",
        action="store_true",
        help="print the SunSpec model chain of --unit and what each model maps to",
    )
    p_scan.add_argument(
        "--unit", type=_in(0, 255), default=1, help="--sunspec: the unit id (default 1)"
    )
    p_scan.set_defaults(func=run_command, parser=p_scan, default_timeout=SCAN_TIMEOUT)
