"""Command line: `modbus-bridge check | run | demo`.

Exit codes: 0 ok, 2 bad configuration or usage, 1 unexpected failure.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from typing import ParamSpec, TextIO, TypeVar

from bridge import __version__
from bridge.app import Bridge, compile_plan
from bridge.config import load_config
from bridge.errors import ConfigError
from bridge.model import BridgeConfig, SerialLink
from bridge.planner import host_load

log = logging.getLogger("bridge")

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
HARD_EXIT_AFTER = 4.8  # seconds after SIGTERM: the process is gone by then, whatever hangs

_P = ParamSpec("_P")
_T = TypeVar("_T")


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _load(path: str, err: TextIO) -> BridgeConfig | None:
    try:
        return load_config(path)
    except ConfigError as exc:
        n = len(exc.problems)
        print(f"{path}: {n} problem{'s' if n != 1 else ''} in the configuration:", file=err)
        for problem in exc.problems:
            print(f"  {problem}", file=err)
        return None


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
    print(f"{args.config}: configuration OK")
    print(render_plan(config))
    return EXIT_OK


def _install_hard_deadline(seconds: float) -> None:
    """Last resort: Python 3.11 can swallow a cancellation inside wait_for, and a
    library may hang in shutdown. A daemon thread ends the process regardless."""

    def expire() -> None:
        # Non-zero: a hung shutdown is a bug that systemd and tests should see.
        log.error("shutdown did not finish in %.1fs; exiting anyway", seconds)
        logging.shutdown()
        os._exit(EXIT_FAILURE)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


class _DaemonExecutor(concurrent.futures.ThreadPoolExecutor):
    """The loop's default executor: every call in its own daemon thread, never joined.

    Blocking calls end up there: paho's connect with its TLS handshake (up to 5 s against
    a broker that accepts TCP but does not answer) and DNS lookups. `asyncio.run` and the
    interpreter join a ThreadPoolExecutor's threads at exit, so one such call would hold
    the process for seconds after an orderly shutdown. Calls are rare (connect attempts,
    spaced by backoff), so a thread each is cheap. (A ThreadPoolExecutor subclass only
    because asyncio accepts nothing else as the default executor; its pool is unused.)
    """

    def submit(
        self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
    ) -> concurrent.futures.Future[_T]:
        future: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def work() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                result = fn(*args, **kwargs)
            except BaseException as exc:
                future.set_exception(exc)
            else:
                future.set_result(result)

        threading.Thread(target=work, name="bridge-blocking", daemon=True).start()
        return future

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Nothing to wait for: a thread still blocked dies with the process."""


async def _run_bridge(config: BridgeConfig) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.set_default_executor(_DaemonExecutor())

    def on_signal(signame: str) -> None:
        if not stop.is_set():
            log.info("%s received: shutting down", signame)
            _install_hard_deadline(HARD_EXIT_AFTER)
            stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig.name)
    bridge = Bridge(config)
    await bridge.run(stop)
    return EXIT_FAILURE if bridge.failed else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config, sys.stderr)
    if config is None:
        return EXIT_CONFIG
    return asyncio.run(_run_bridge(config))


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
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
