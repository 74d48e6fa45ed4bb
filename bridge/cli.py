"""Command line: `modbus-bridge check | run | demo | read | write | scan`.

Exit codes: 0 ok, 2 bad configuration or usage, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from bridge import __version__
from bridge.app import Bridge, Loader, compile_plan
from bridge.commission import add_parsers as add_commission_parsers
from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.logs import redact
from bridge.model import BridgeConfig, SerialLink
from bridge.planner import host_load
from bridge.process import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    LOG_FORMATS,
    Process,
    hide_secrets,
    run_main,
    setup_logging,
)

log = logging.getLogger("bridge")

EXIT_CONFIG = EXIT_USAGE
HARD_EXIT_AFTER = 4.8  # seconds after SIGTERM: the process is gone by then, whatever hangs


def _load(path: str, err: TextIO) -> BridgeConfig | None:
    """The configuration, its secrets hidden in every log line from now on; or None
    after printing every problem."""
    try:
        config = load_config(path)
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
    warnings: list[str] = []
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
        for device in devices:
            lines.append(
                f"  device {device.name} unit {device.unit} every {device.interval:g}s: "
                f"{len(device.points)} points in {len(plan[device.name])} blocks"
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


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args.config, sys.stderr)
    if config is None:
        return EXIT_CONFIG
    lines = [f"{args.config}: configuration OK", render_plan(config), describe_mqtt(config)]
    if config.metrics is not None:
        where = config.metrics.describe()
        reach = "loopback only" if config.metrics.loopback else "REACHABLE FROM OTHER MACHINES"
        lines.append(f"metrics: http://{where}/metrics ({reach}, no authentication)")
    print(redact("\n".join(lines), config.secrets))  # nothing here may show a secret
    return EXIT_OK


async def _run_bridge(config: BridgeConfig, load: Loader, process: Process) -> int:
    bridge = Bridge(config)
    await bridge.run(process.stop, reload=process.reload, load=load)
    return EXIT_FAILURE if bridge.failed else EXIT_OK


def _reloader(path: str, config: BridgeConfig) -> Loader:
    """Reads `path` again for a reload (SIGHUP). The secrets of every configuration read
    so far stay hidden in the logs."""
    secrets = set(config.secrets)

    def load() -> BridgeConfig:
        new = load_config(path)  # raises ConfigError: the bridge logs every problem
        secrets.update(new.secrets)
        hide_secrets(sorted(secrets))
        return new

    return load


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config, sys.stderr)
    if config is None:
        return EXIT_CONFIG
    process = Process(hard_exit_after=HARD_EXIT_AFTER, reloadable=True)
    load = _reloader(args.config, config)
    return run_main(lambda p: _run_bridge(config, load, p), process)


def cmd_demo(args: argparse.Namespace) -> int:
    from bridge.demo import run_demo  # noqa: PLC0415 - only the demo needs the simulator

    code: int = run_demo(devices=args.devices, duration=args.duration)
    return code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modbus-bridge",
        description="Bridge Modbus TCP devices to MQTT with one persistent session per host.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default=os.environ.get("BRIDGE_LOG_LEVEL", "info"),
        choices=["debug", "info", "warning", "error"],
    )
    parser.add_argument(
        "--log-format",
        default=os.environ.get("BRIDGE_LOG_FORMAT", "text"),
        choices=LOG_FORMATS,
        help="text (default; one line per event, for journald) or json (one JSON object "
        "per line, for log shippers). Also BRIDGE_LOG_FORMAT.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_check = sub.add_parser("check", help="validate the configuration and print the read plan")
    p_check.add_argument("-c", "--config", required=True)
    p_check.set_defaults(func=cmd_check)
    p_run = sub.add_parser("run", help="run the bridge")
    p_run.add_argument("-c", "--config", required=True)
    p_run.set_defaults(func=cmd_run)
    p_demo = sub.add_parser(
        "demo", help="simulated devices + broker, values printed as they arrive"
    )
    p_demo.add_argument("--devices", type=int, default=6)
    p_demo.add_argument("--duration", type=float, default=0.0, help="seconds; 0 = until Ctrl-C")
    p_demo.set_defaults(func=cmd_demo)
    add_commission_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level, args.log_format)
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
