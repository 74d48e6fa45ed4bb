"""Command line: `modbus-bridge check | run | sim | demo | profiles | import | read | write | scan`.

Exit codes: 0 ok, 2 bad configuration or usage, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import stat
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn, TextIO

from bridge import __version__
from bridge.app import Bridge, Loader, compile_plan
from bridge.commission import add_parsers as add_commission_parsers
from bridge.config import config_from_bytes, load_config
from bridge.config_nodes import suggest
from bridge.config_profiles import Profile, header_doc, load_profiles, point_doc, profile_points
from bridge.errors import ConfigError, Problem, file_kind
from bridge.hassimport import ImportError_, import_file
from bridge.logs import redact
from bridge.model import BridgeConfig, Order, SerialLink
from bridge.planner import host_load
from bridge.process import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    LOG_FORMATS,
    Process,
    descriptor_warning,
    hide_secrets,
    raise_descriptor_limit,
    run_main,
    setup_logging,
)
from bridge.shard import MAX_SHARDS, imbalance, parse_count, parse_shard, shares
from bridge.shard import client_id as shard_client_id
from bridge.shard import select as select_shard
from bridge.topics import topics_of

log = logging.getLogger("bridge")

EXIT_CONFIG = EXIT_USAGE
HARD_EXIT_AFTER = 4.8  # seconds after SIGTERM: the process is gone by then, whatever hangs
SIM_HARD_EXIT_AFTER = 5.0


ShardArg = tuple[int, int]  # (K, N): shard K of N


def _read(path: str, shard: ShardArg | None) -> BridgeConfig:
    """The configuration file, or the share of shard K of N of it; raises ConfigError."""
    config = load_config(path)
    return config if shard is None else select_shard(config, *shard)


def _load(path: str, err: TextIO, shard: ShardArg | None = None) -> BridgeConfig | None:
    """The configuration (or a shard's share of it), its secrets hidden in every log
    line from now on; or None after printing every problem."""
    try:
        config = _read(path, shard)
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{path}: {n} problem{'s' if n != 1 else ''} in the configuration:", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return None
    hide_secrets(config.secrets)
    return config


def describe_mqtt(config: BridgeConfig) -> str:
    """The broker line of `check`. The user name is shown as written; a secret one
    (from the environment) is hidden by the caller like any secret."""
    m = config.mqtt
    tls = ", TLS" if m.tls is not None else ""
    user = f" as {m.username}" if m.username else ""
    password = " with a password" if m.password else ""
    protocol = "5" if m.protocol == 5 else "3.1.1"
    return (
        f"mqtt: {m.host}:{m.port}{tls}{user}{password}, client id {m.client_id}, "
        f"MQTT {protocol}, base topic {m.base_topic}"
    )


def render_plan(config: BridgeConfig) -> str:
    """The read plan as text: per host its devices, blocks, request rate and bus time."""
    plan = compile_plan(config)
    lines: list[str] = []
    warnings = [f"WARNING: {w}" for w in config.warnings]
    for host in config.hosts:
        devices = config.devices_on(host.name)
        load = host_load(host, devices, {d.name: plan[d.name] for d in devices})
        baudrate = host.bus_baudrate
        if isinstance(host.link, SerialLink):
            bus = f", bus time ~{load.bus_seconds_per_second:.2f} s/s (serial port)"
        elif baudrate is not None:
            assumed = " assumed" if host.link.baudrate is None else ""
            bus = (
                f", bus time ~{load.bus_seconds_per_second:.2f} s/s at {baudrate} baud"
                f"{assumed} behind the gateway"
            )
        else:
            bus = ""  # native Modbus TCP: no serial bus to fill
        lines.append(
            f"host {host.name} ({host.describe()}): {len(devices)} devices, "
            f"{len(load.blocks)} blocks, {load.requests_per_second:.1f} requests/s{bus}"
        )
        proxy = host.proxy
        if proxy is not None:
            units = proxy.units or sorted({d.unit for d in devices})
            lines.append(
                f"  proxy on {proxy.describe()}: units {','.join(map(str, units))}, "
                f"{'reads and writes' if proxy.writes else 'reads only'}, "
                f"up to {proxy.clients} clients"
            )
            if not proxy.loopback:
                warnings.append(
                    f"WARNING: host {host.name}: the proxy on {proxy.describe()} is reachable "
                    "from other machines, without authentication (proxy.listen)"
                )
        for device in devices:
            lines.append(
                f"  device {device.name} unit {device.unit} every {device.interval:g}s: "
                f"{len(device.points)} points in {len(plan[device.name])} blocks"
                + (" (and the SunSpec models it has, read at start)" if device.sunspec else "")
            )
            for b in plan[device.name]:
                lines.append(
                    f"    unit {b.unit} {b.table.value:<8} start {b.start:<5} count {b.count:<4}"
                    f" every {b.interval:g}s ({len(b.points)} points)"
                )
        if load.overloaded:
            warnings.append(
                f"WARNING: host {host.name} needs ~{load.bus_seconds_per_second:.2f} s of bus time "
                f"per second at {baudrate} baud: it cannot keep its devices' intervals; "
                "lengthen intervals, raise the baud rate or split the devices over more buses"
            )
    total = sum(len(b) for b in plan.values())
    lines.append(
        f"total: {len(config.hosts)} hosts, {len(config.devices)} devices, {total} read blocks"
    )
    return "\n".join(lines + warnings)


def describe_shard(config: BridgeConfig, fleet: BridgeConfig) -> str:
    """The header of `check --shard`: what this shard runs of the fleet."""
    shard = config.shard
    assert shard is not None
    parts = shares(fleet, shard.count)
    mine = parts[shard.index - 1]
    hosts = sum(len(p.hosts) for p in parts)
    rate = sum(p.requests_per_second for p in parts)
    return (
        f"shard {shard} (hosts by a stable hash of their name): {len(mine.hosts)} of {hosts} "
        f"hosts, {mine.devices} of {len(fleet.devices)} devices, "
        f"{mine.requests_per_second:.1f} of {rate:.1f} requests/s; bridge topics "
        f"{topics_of(config).bridge_state.removesuffix('/state')}/..."
    )


def render_shares(config: BridgeConfig, count: int) -> str:
    """`check --shards N`: every shard's hosts, devices and requests per second."""
    parts = shares(config, count)
    lines = [
        f"{count} shard{'s' if count != 1 else ''} (hosts by a stable hash of their name; "
        f"run each with --shard K/{count}):"
    ]
    for part in parts:
        shard = part.shard
        metrics = ""
        if config.metrics is not None:
            offset = shard.index - 1 if config.metrics.shard_ports else 0
            metrics = f", metrics on port {config.metrics.port + offset}"
        hosts = ", ".join(part.hosts[:8]) + (
            f" and {len(part.hosts) - 8} more" if len(part.hosts) > 8 else ""
        )
        lines.append(
            f"  shard {shard}: {len(part.hosts)} hosts, {part.devices} devices, "
            f"{part.requests_per_second:.1f} requests/s, client id "
            f"{shard_client_id(shard.fleet_client_id, shard.index, shard.count)}{metrics}"
            + (f": {hosts}" if hosts else "")
        )
    busiest = imbalance(parts)
    if count > 1:
        lines.append(
            f"the busiest shard has {busiest:.2f} x an even share of the requests"
            + (
                " (a hash splits a few hosts unevenly: compare other counts with --shards)"
                if busiest >= 1.5
                else ""
            )
        )
    return "\n".join(lines)


def cmd_check(args: argparse.Namespace) -> int:
    if args.shards is not None:
        fleet = _load(args.config, sys.stderr)
        if fleet is None:
            return EXIT_CONFIG
        lines = [f"{args.config}: configuration OK", render_shares(fleet, args.shards)]
        print(redact("\n".join(lines), fleet.secrets))
        return EXIT_OK
    config = _load(args.config, sys.stderr, args.shard)
    if config is None:
        return EXIT_CONFIG
    lines = [f"{args.config}: configuration OK"]
    if config.shard is not None:
        lines.append(describe_shard(config, load_config(args.config)))
    lines += [render_plan(config), describe_mqtt(config)]
    if config.metrics is not None:
        where = config.metrics.describe()
        reach = "loopback only" if config.metrics.loopback else "REACHABLE FROM OTHER MACHINES"
        lines.append(f"metrics: http://{where}/metrics ({reach}, no authentication)")
    if config.buffer is not None:
        b = config.buffer
        lines.append(
            f"buffer: {b.path} (at most {b.max_bytes} bytes, changes kept {b.max_age:g}s, "
            f"replayed at {b.replay_rate:g}/s, written every {b.flush_interval:g}s)"
        )
    if config.sparkplug is not None:
        sp = config.sparkplug
        host = "" if sp.primary_host_id is None else f", primary host {sp.primary_host_id}"
        lines.append(
            f"sparkplug: edge node spBv1.0/{sp.group_id}/+/{sp.edge_node_id}{host} "
            f"(client id {config.mqtt.client_id}-sparkplug), bdSeq kept in {sp.state_file}"
        )
    print(redact("\n".join(lines), config.secrets))  # nothing here may show a secret
    return EXIT_OK


async def _run_bridge(config: BridgeConfig, load: Loader, process: Process) -> int:
    bridge = Bridge(config)
    await bridge.run(process.stop, reload=process.reload, load=load)
    if bridge.refused is not None:
        return EXIT_USAGE  # another shard layout runs: restarting cannot help
    return EXIT_FAILURE if bridge.failed else EXIT_OK


SETTLE = 0.5  # seconds a configuration file must be left alone before a reload reads it
SETTLE_MAX = 10.0  # seconds a reload waits for a file that keeps changing


def read_settled(path: str, *, settle: float = SETTLE, give_up: float = SETTLE_MAX) -> bytes:
    """The bytes of the configuration file for a reload: only a regular file (a FIFO
    would block the read for ever), opened without blocking, and only once its size
    and time of change have been still for `settle` seconds and stayed so while it
    was read (a file caught half-written can be valid YAML). Raises ConfigError.
    The way to replace the file is still to write a new one and rename it over."""

    def problem(message: str) -> ConfigError:
        return ConfigError([Problem(path, None, None, "", message)])

    deadline = time.monotonic() + give_up
    while True:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise problem(f"cannot read file: {exc.strerror or exc}") from None
        try:
            before = os.fstat(fd)
            if not stat.S_ISREG(before.st_mode):
                raise problem(
                    f"is {file_kind(before.st_mode)}, not a regular file: a reload reads "
                    "only regular files (write the new file, then rename it over this one)"
                )
            age = time.time() - before.st_mtime
            if 0 <= age < settle:  # changed a moment ago: perhaps still being written
                data = None
            else:
                with os.fdopen(os.dup(fd), "rb") as fh:
                    data = fh.read()
                after = os.fstat(fd)
                if (after.st_size, after.st_mtime_ns) != (before.st_size, before.st_mtime_ns):
                    data = None  # written to while it was read
        finally:
            os.close(fd)
        if data is not None:
            return data
        if time.monotonic() >= deadline:
            raise problem(
                f"the file kept changing for {give_up:g} s: not read (write the new file, "
                "then rename it over this one)"
            )
        time.sleep(max(0.05, settle - max(0.0, age)))


def _reloader(path: str, shard: ShardArg | None, config: BridgeConfig) -> Loader:
    """Reads `path` again for a reload (SIGHUP), for the same shard, once it has been
    still for a moment (`read_settled`). The secrets of every configuration read so far
    stay hidden in the logs."""
    secrets = set(config.secrets)

    def load() -> BridgeConfig:
        # Raises ConfigError: the bridge logs every problem.
        new = config_from_bytes(read_settled(path), source=path)
        if shard is not None:
            new = select_shard(new, *shard)
        secrets.update(new.secrets)
        hide_secrets(sorted(secrets))
        return new

    return load


def cmd_run(args: argparse.Namespace) -> int:
    process = Process(hard_exit_after=HARD_EXIT_AFTER, reloadable=True)
    process.hold_reloads()
    config = _load(args.config, sys.stderr, args.shard)
    if config is None:
        return EXIT_CONFIG
    for warning in config.warnings:  # what `check` warns of, in the log too
        log.warning("%s", warning)
    low = descriptor_warning(raise_descriptor_limit(), len(config.hosts))
    if low is not None:
        log.warning("%s", low)
    load = _reloader(args.config, args.shard, config)
    return run_main(lambda p: _run_bridge(config, load, p), process)


def cmd_sim(args: argparse.Namespace) -> int:
    from bridge.simulate import SimFleet, serve  # noqa: PLC0415 - only sim needs the simulator

    config = _load(args.config, sys.stderr)
    if config is None:
        return EXIT_CONFIG
    try:
        with open(args.config, encoding="utf-8-sig") as f:
            text = f.read()
        fleet = SimFleet(config, bind=args.bind, port_offset=args.port_offset)
    except (OSError, ValueError) as exc:
        print(f"sim: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    process = Process(hard_exit_after=SIM_HARD_EXIT_AFTER, force_on_second_signal=True)
    return run_main(
        lambda p: serve(
            fleet,
            source=args.config,
            text=text,
            write_config=args.write_config,
            duration=args.duration,
            out=sys.stdout,
            err=sys.stderr,
            process=p,
        ),
        process,
    )


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo  # noqa: PLC0415 - only the demo needs the simulator

    code: int = run_demo(
        devices=args.devices,
        duration=args.duration,
        broker=args.broker,
        print_config=args.print_config,
    )
    return code


def _shard_arg(text: str) -> ShardArg:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _shards_arg(text: str) -> int:
    count = parse_count(text)
    if count is None or not 1 <= count <= MAX_SHARDS:
        raise argparse.ArgumentTypeError(
            f"{text!r}: the number of shards must be 1 to {MAX_SHARDS}"
        )
    return count


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line and a hint, not the whole usage block."""

    def error(self, message: str) -> NoReturn:
        if message.startswith("the following arguments are required: COMMAND"):
            message = "which command? one of " + ", ".join(COMMANDS)
        self.exit(
            EXIT_USAGE,
            f"{self.prog}: error: {message}\nTry '{self.prog} --help' for more information.\n",
        )


COMMANDS = ("check", "run", "sim", "demo", "read", "write", "scan", "profiles", "import")
DESCRIPTION = (
    "Bridge Modbus devices to MQTT: Modbus TCP, RTU through a TCP gateway, or RTU on a "
    "serial RS485 port, with one persistent session per host."
)


def _config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c",
        "--config",
        required=True,
        metavar="FILE",
        help="the configuration file (YAML; config.example.yaml lists every key)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="modbus-bridge",
        description=DESCRIPTION,
        epilog="Run 'modbus-bridge COMMAND --help' for a command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BRIDGE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
        help="what is logged to stderr (default info). Also BRIDGE_LOG_LEVEL.",
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("BRIDGE_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text (default; one line per event, for journald) or json (one JSON object "
        "per line, for log shippers). Also BRIDGE_LOG_FORMAT.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p_check = sub.add_parser(
        "check",
        help="validate the configuration and print the read plan",
        description="Validate the configuration (every problem with file:line:column, exit "
        "2) and print the read plan: per host its devices, blocks, requests/s and bus time.",
    )
    _config_option(p_check)
    split = p_check.add_mutually_exclusive_group()
    split.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="K/N",
        default=os.environ.get("BRIDGE_SHARD") or None,
        help="the read plan of shard K of N only (also BRIDGE_SHARD)",
    )
    split.add_argument(
        "--shards",
        type=_shards_arg,
        metavar="N",
        help="how N shards would split the hosts: hosts, devices and requests/s of each",
    )
    p_check.set_defaults(func=cmd_check)
    p_run = sub.add_parser(
        "run",
        help="run the bridge",
        description="Run the bridge: poll the devices and publish to MQTT until SIGTERM or "
        "SIGINT; SIGHUP reads the configuration again and applies what changed.",
    )
    _config_option(p_run)
    p_run.add_argument(
        "--shard",
        type=_shard_arg,
        metavar="K/N",
        default=os.environ.get("BRIDGE_SHARD") or None,
        help="run only the hosts whose stable hash falls in shard K of N (docs/scaling.md; "
        "also BRIDGE_SHARD)",
    )
    p_run.set_defaults(func=cmd_run)
    p_sim = sub.add_parser(
        "sim",
        help="simulate every device of a configuration, to run the bridge against",
        description="Serve every host and device of the configuration from the simulator: "
        "each TCP host on --bind at its port plus --port-offset, each serial port on a new "
        "pseudo-terminal; every point readable, writable points writable, read-only values "
        "moving. --write-config writes the configuration pointed at the simulator, for run.",
    )
    _config_option(p_sim)
    p_sim.add_argument(
        "--port-offset",
        type=int,
        default=0,
        metavar="N",
        help="listen on each host's port plus N (e.g. 10000: ports below 1024 need root)",
    )
    p_sim.add_argument(
        "--bind",
        default="127.0.0.1",
        metavar="ADDRESS",
        help="where the simulated TCP hosts listen (default 127.0.0.1; 0.0.0.0: every interface)",
    )
    p_sim.add_argument(
        "--write-config",
        metavar="FILE",
        help="write the configuration with every host pointed at its simulator (for run)",
    )
    p_sim.add_argument(
        "--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C (default)"
    )
    p_sim.set_defaults(func=cmd_sim)
    p_demo = sub.add_parser(
        "demo",
        help="simulated devices + broker, values printed as they arrive",
        description="The bridge against simulated meters on two simulated gateways, with "
        "the MQTT broker on 127.0.0.1:1883 or an embedded one; prints what arrives on MQTT.",
    )
    p_demo.add_argument(
        "--devices", type=int, default=6, help="how many simulated meters, 1..247 (default 6)"
    )
    p_demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    p_demo.add_argument(
        "--broker",
        metavar="HOST[:PORT]",
        help="the MQTT broker to use (default: 127.0.0.1:1883 if it answers, else an embedded one)",
    )
    p_demo.add_argument(
        "--print-config",
        action="store_true",
        help="print the configuration the demo runs the bridge with (a starting point for "
        "yours) before the demo's own output; the demo then runs as usual",
    )
    p_demo.set_defaults(func=cmd_demo)
    add_commission_parsers(sub)
    p_profiles = sub.add_parser(
        "profiles",
        help="list the device profiles, or show one's points",
        description="List the device profiles (`profile: maker/model` on a device): the "
        "built-in ones, and those of the folders in the configuration's `profiles:` (given "
        "-c), which replace a built-in one of the same name. `profiles show NAME` prints "
        "the points of one. Exit 2 when a profile has problems (each with file:line:column).",
    )
    p_profiles.add_argument(
        "action", nargs="?", choices=["list", "show"], default="list", help="list (default)"
    )
    p_profiles.add_argument("name", nargs="?", metavar="NAME", help="show: the profile")
    p_profiles.add_argument("--json", action="store_true", help="as JSON")
    p_profiles.add_argument(
        "-c", "--config", metavar="FILE", help="also the profile folders of this configuration"
    )
    p_profiles.set_defaults(func=cmd_profiles)
    p_import = sub.add_parser(
        "import",
        help="turn another program's Modbus configuration into this bridge's",
        description="Read Home Assistant's `modbus:` configuration (configuration.yaml, a "
        "package, or the included list of hubs; !include and !secret are followed from the "
        "file's folder) and print this bridge's configuration for it. Each item names its "
        "source line; what cannot be carried over is listed at the end, and the exit code "
        "is then 1. docs/migrating.md has the key table.",
    )
    p_import.add_argument("source", choices=["homeassistant"], help="whose configuration")
    p_import.add_argument("file", metavar="FILE", help="the YAML file to read")
    p_import.add_argument(
        "-o", "--output", metavar="OUT", help="write the configuration here (default: stdout)"
    )
    p_import.set_defaults(func=cmd_import)
    return parser


def cmd_profiles(args: argparse.Namespace) -> int:
    """`profiles [--json]` and `profiles show NAME [--json]`."""
    folders: tuple[str, ...] = ()
    if args.config:
        config = _load(args.config, sys.stderr)
        if config is None:
            return EXIT_CONFIG
        folders = config.profiles
    if args.action == "show" and not args.name:
        print("error: profiles show needs the NAME of a profile", file=sys.stderr)
        return EXIT_USAGE
    if args.action == "list" and args.name:
        print(f"error: did you mean: profiles show {args.name}", file=sys.stderr)
        return EXIT_USAGE
    profiles, problems = load_profiles(folders)
    for problem in problems:
        print(f"{problem}", file=sys.stderr)
    if args.action == "show":
        found = next((p for p in profiles if p.name == args.name), None)
        if found is None:
            if not any(p.file.endswith(f"{args.name}.yaml") for p in problems):
                hint = suggest(args.name, [p.name for p in profiles])
                print(f"error: unknown profile {args.name!r}{hint}", file=sys.stderr)
            return EXIT_CONFIG
        sys.stdout.write(_show_profile(found, as_json=args.json))
    else:
        sys.stdout.write(_list_profiles(profiles, as_json=args.json))
    return EXIT_CONFIG if problems else EXIT_OK


def _list_profiles(profiles: Sequence[Profile], *, as_json: bool) -> str:
    if as_json:
        return json.dumps([header_doc(p) for p in profiles], indent=2, ensure_ascii=False) + "\n"
    rows = [("NAME", "KIND", "MANUFACTURER", "MODEL", "SOURCE DOCUMENT")]
    rows += [
        (p.name + ("" if p.builtin else " *"), p.kind, p.manufacturer, p.model, p.source.describe())
        for p in profiles
    ]
    out = _table(rows)
    if not all(p.builtin for p in profiles):
        out += "* from a profiles folder of the configuration\n"
    return out


def _show_profile(profile: Profile, *, as_json: bool) -> str:
    points = profile_points(profile)
    if as_json:
        doc = header_doc(profile)
        doc["byte_order"] = (profile.byte_order or Order.BIG).value
        doc["word_order"] = (profile.word_order or Order.BIG).value
        doc["points"] = [point_doc(p) for p in points]
        return json.dumps(doc, indent=2, ensure_ascii=False) + "\n"
    head = [
        f"{profile.name}: {profile.manufacturer} {profile.model} ({profile.kind})",
        f"source: {profile.source.describe()}",
        f"file: {profile.path}",
        f"{len(points)} points; use it with `profile: {profile.name}` on a device",
        *(
            [f"reads at most {profile.max_read} registers per request (max_read)"]
            if profile.max_read
            else []
        ),
        "",
    ]
    rows = [("POINT", "TABLE", "ADDRESS", "TYPE", "UNIT", "DEVICE CLASS", "STATE CLASS", "")]
    for p in points:
        doc = point_doc(p)
        notes = [f"{k} {doc[k]}" for k in ("scale", "offset", "scale_factor", "bit") if k in doc]
        if p.values:
            notes.append("values " + ", ".join(label for _, label in p.values))
        if p.writable:
            notes.append("writable")
        rows.append(
            (
                p.name,
                p.table.value,
                str(p.address),
                p.type.value + (f"[{p.length}]" if p.length else ""),
                p.unit or "",
                p.device_class or "",
                p.state_class.value if p.state_class else "",
                "; ".join(notes),
            )
        )
    return "\n".join(head) + "\n" + _table(rows)


def _table(rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() + "\n"
        for row in rows
    )


def cmd_import(args: argparse.Namespace) -> int:
    """`import homeassistant FILE`: exit 0 when everything was carried over, 1 when
    something was left out (listed at the end of the output and on stderr), 2 when the
    file is no Home Assistant modbus configuration."""
    try:
        conversion = import_file(Path(args.file))
    except ImportError_ as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.output:
        Path(args.output).write_text(conversion.text, encoding="utf-8")
    else:
        sys.stdout.write(conversion.text)
    print(
        f"imported {conversion.hosts} hosts, {conversion.devices} devices, "
        f"{conversion.points} points",
        file=sys.stderr,
    )
    for problem in conversion.notes:
        print(f"note: {problem.describe()}", file=sys.stderr)
    for problem in conversion.left_out:
        print(f"left out: {problem.describe()}", file=sys.stderr)
    if conversion.left_out:
        print(
            f"{len(conversion.left_out)} items left out (listed above and at the end of the "
            "configuration): carry them over by hand",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shard = args.shard if args.command == "run" else None
    setup_logging(
        args.log_level, args.log_format, shard=None if shard is None else f"{shard[0]}/{shard[1]}"
    )
    try:
        code: int = args.func(args)
    except KeyboardInterrupt:
        return EXIT_OK
    except BrokenPipeError:  # `modbus-bridge check -c x | head`: the reader left, no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    return code


if __name__ == "__main__":
    sys.exit(main())
