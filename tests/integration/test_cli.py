"""The real CLI as a user runs it: exit codes and messages, no tracebacks."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BAD = REPO / "tests" / "configs" / "bad"


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bridge", *args],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )


@pytest.mark.parametrize("verb", ["check", "run"])
def test_bad_config_exits_2_listing_every_problem(tmp_path: Path, verb: str) -> None:
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(
        "version: 1\n"
        "mqtt: {host: 127.0.0.1, output: jsn}\n"
        "hosts:\n"
        "  - {name: gw, address: 127.0.0.1}\n"
        "devices:\n"
        "  - name: meter\n"
        "    host: gw\n"
        "    unit: 1\n"
        "    interval: 1s\n"
        "    points:\n"
        "      - {name: a, table: holding, address: 0, type: flaot32}\n"
        "      - {name: b, table: input, address: 0, type: uint16, sacle: 2}\n"
    )
    result = _cli(verb, "-c", str(cfg))
    assert result.returncode == 2
    err = result.stderr
    assert "Traceback" not in err
    assert f"{cfg}:2:" in err and "mqtt.output" in err and "did you mean 'json'" in err
    assert f"{cfg}:11:" in err and "devices[0].points[0].type" in err and "float32" in err
    assert f"{cfg}:12:" in err and "devices[0].points[1]" in err and "did you mean 'scale'" in err


def test_missing_file_exits_2(tmp_path: Path) -> None:
    result = _cli("check", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert "nope.yaml" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("path", sorted(BAD.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_bad_fixture_exits_2_through_cli(path: Path) -> None:
    result = _cli("check", "-c", str(path))
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr


def test_check_prints_the_plan_of_the_example() -> None:
    result = _cli("check", "-c", str(REPO / "config.example.yaml"))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "configuration OK" in out
    assert "requests/s" in out and "bus time" in out
    assert " holding " in out and "start" in out and "count" in out


def test_check_warns_when_a_host_cannot_keep_up(tmp_path: Path) -> None:
    cfg = tmp_path / "busy.yaml"
    cfg.write_text(
        "version: 1\n"
        "mqtt: {host: 127.0.0.1}\n"
        "hosts: [{name: slow, address: 127.0.0.1, baudrate: 9600}]\n"
        "devices:\n"
        "  - name: m-{unit}\n"
        "    host: slow\n"
        "    units: 1-40\n"
        "    interval: 250ms\n"
        "    points: [{name: a, table: holding, address: 0, type: string, length: 100}]\n"
    )
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "WARNING: host slow" in result.stdout


def test_check_output_is_one_line_per_problem_whatever_the_input() -> None:
    # Control characters, a newline inside an address and a 70,000-character name:
    # every problem is still exactly one line, with its position.
    result = _cli("check", "-c", str(BAD / "hostile_names.yaml"))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    header, problems = lines[0], lines[1:]
    assert header.endswith(f"{len(problems)} problems in the configuration:")
    assert all(re.match(r"  \S+hostile_names\.yaml:\d+:\d+: ", line) for line in problems)
    assert max(len(line) for line in problems) < 300


def test_check_estimates_bus_time_only_for_serial_buses(tmp_path: Path) -> None:
    cfg = tmp_path / "mixed.yaml"
    cfg.write_text(
        "version: 1\n"
        "hosts:\n"
        "  - {name: plc, address: 10.0.0.5}\n"  # a native Modbus TCP device
        "  - {name: rtu-gw, address: 10.0.0.6, framer: rtu}\n"
        "  - {name: bus1, serial: /dev/ttyUSB0, baudrate: 9600}\n"
        "devices:\n"
        "  - {name: p, host: plc, unit: 1, interval: 100ms,\n"
        "     points: [{name: a, table: holding, address: 0, type: string, length: 100}]}\n"
        "  - {name: g, host: rtu-gw, unit: 1,\n"
        "     points: [{name: a, table: holding, address: 0, type: uint16}]}\n"
        "  - {name: 's{unit}', host: bus1, units: 1-20, interval: 500ms,\n"
        "     points: [{name: a, table: holding, address: 0, type: string, length: 100}]}\n"
    )
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    plc = next(line for line in lines if line.startswith("host plc "))
    assert "bus time" not in plc and "10.0 requests/s" in plc
    gateway = next(line for line in lines if line.startswith("host rtu-gw "))
    assert "at 9600 baud assumed behind the gateway" in gateway
    bus = next(line for line in lines if line.startswith("host bus1 "))
    assert "(/dev/ttyUSB0 9600 8N1)" in bus and "(serial port)" in bus
    warnings = [line for line in lines if line.startswith("WARNING")]
    overloaded = [line for line in warnings if "cannot keep its devices' intervals" in line]
    assert len(overloaded) == 1 and "host bus1" in overloaded[0]  # 20 long reads twice a second
    # The other warning: the port is not there (on this machine).
    missing = [line for line in warnings if "does not exist (yet)" in line]
    assert len(warnings) == 1 + len(missing)
    assert len(missing) == (0 if os.path.exists("/dev/ttyUSB0") else 1)


def test_check_prints_where_metrics_listen(tmp_path: Path) -> None:
    cfg = tmp_path / "metrics.yaml"
    base = (REPO / "tests" / "configs" / "bad" / "metrics.yaml").read_text()
    cfg.write_text(base.replace("0.0.0.0:70000", "0.0.0.0:9108").replace("  port: 9108\n", ""))
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert "metrics: http://0.0.0.0:9108/metrics (REACHABLE FROM OTHER MACHINES" in result.stdout


def _fleet_file(tmp_path: Path) -> Path:
    cfg = tmp_path / "fleet.yaml"
    hosts = "".join(f"  - {{name: gw-{n}, address: 10.0.0.{n}}}\n" for n in range(1, 7))
    devices = "".join(
        f"  - {{name: 'm{n}-{{unit}}', host: gw-{n}, units: 1-{n}, interval: 1s, points: "
        "[{name: a, table: holding, address: 0, type: uint16}]}\n"
        for n in range(1, 7)
    )
    cfg.write_text(
        "version: 1\nmqtt: {client_id: plant}\nmetrics: {listen: 127.0.0.1:9108}\n"
        f"hosts:\n{hosts}devices:\n{devices}"
    )
    return cfg


@pytest.mark.parametrize(
    "args",
    [
        ("run", "--shard", "0/2"),
        ("run", "--shard", "3/2"),
        ("run", "--shard", "two/4"),
        ("check", "--shard", "1/0"),
        ("check", "--shards", "0"),
        ("check", "--shard", "1/2", "--shards", "2"),
    ],
    ids=" ".join,
)
def test_bad_shard_values_are_usage_errors(tmp_path: Path, args: tuple[str, ...]) -> None:
    verb, *rest = args
    result = _cli(verb, "-c", str(_fleet_file(tmp_path)), *rest)
    assert result.returncode == 2, result.stdout + result.stderr
    first, hint = result.stderr.splitlines()  # one line and a hint, not the usage block
    assert (
        "--shard" in first
        and hint == "Try 'modbus-bridge " + verb + " --help' for more information."
    )
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("verb", ["check", "run"])
def test_bridge_shard_takes_ascii_digits_only(tmp_path: Path, verb: str) -> None:
    """BRIDGE_SHARD in fullwidth digits is refused like any bad value, not read as 1/2."""
    env = {**os.environ, "BRIDGE_SHARD": "\uff11/\uff12"}
    result = _cli(verb, "-c", str(_fleet_file(tmp_path)), env=env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "--shard" in result.stderr.splitlines()[0]  # one line and a --help hint
    result = _cli("check", "-c", str(_fleet_file(tmp_path)), "--shards", "\uff12")
    assert result.returncode == 2 and "number of shards" in result.stderr


def test_check_shows_each_shards_share(tmp_path: Path) -> None:
    cfg = _fleet_file(tmp_path)
    result = _cli("check", "-c", str(cfg), "--shards", "3")
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stdout.splitlines() if line.startswith("  shard ")]
    assert [line.split(":")[0].strip() for line in lines] == ["shard 1/3", "shard 2/3", "shard 3/3"]
    devices = [int(re.search(r"(\d+) devices", line).group(1)) for line in lines]  # type: ignore[union-attr]
    rates = [float(re.search(r"([\d.]+) requests/s", line).group(1)) for line in lines]  # type: ignore[union-attr]
    assert sum(devices) == 21 and sum(rates) == pytest.approx(21.0)
    assert "client id plant-shard-2of3, metrics on port 9109" in result.stdout
    # One shard's plan: the hosts of that share only, with its client id and bridge topics.
    one = _cli("check", "-c", str(cfg), "--shard", "2/3")
    assert one.returncode == 0, one.stderr
    hosts = re.findall(r"^host (gw-\d)", one.stdout, re.MULTILINE)
    assert lines[1].endswith(": " + ", ".join(hosts))
    assert f"{devices[1]} of 21 devices" in one.stdout
    assert "client id plant-shard-2of3" in one.stdout and "modbus/bridge/2of3/" in one.stdout
    assert "metrics: http://127.0.0.1:9109/metrics" in one.stdout


def test_check_refuses_a_serial_path_that_is_no_port_and_warns_of_a_missing_one(
    tmp_path: Path,
) -> None:
    """Issue 16, item 7: a file, a folder, /dev/null, /dev/zero or a FIFO passed check."""
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    cfg = tmp_path / "bus.yaml"
    hosts = "".join(
        f"  - {{name: bus{n}, serial: {path}}}\n"
        for n, path in enumerate(["/dev/null", str(tmp_path), str(fifo)])
    )
    devices = "".join(
        f"  - {{name: d{n}, host: bus{n}, unit: 1, points: [{{name: a, table: coil, "
        "address: 0}]}\n"
        for n in range(3)
    )
    cfg.write_text(f"version: 1\nhosts:\n{hosts}devices:\n{devices}")
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()[1:]
    assert [line.split(": ", 2)[1] for line in lines] == [f"hosts[{n}].serial" for n in range(3)]
    assert lines[0] == (
        f"  {cfg}:3:26: hosts[0].serial: '/dev/null' is a memory device (like /dev/null or "
        "/dev/zero), not a serial device"
    )
    assert "is a directory, not a serial device" in lines[1]
    assert "is a FIFO (named pipe), not a serial device" in lines[2]

    missing = tmp_path / "ttyUSB7"
    cfg.write_text(
        f"version: 1\nhosts:\n  - {{name: bus, serial: {missing}}}\ndevices:\n"
        "  - {name: d, host: bus, unit: 1, points: [{name: a, table: coil, address: 0}]}\n"
    )
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    assert (
        f"WARNING: {cfg}:3:25: hosts[0].serial: serial port {missing} does not exist (yet):"
        " is the adapter plugged in?"
    ) in result.stdout


def test_check_lists_what_breaks_the_promise_in_one_run_and_warns_of_the_rest(
    tmp_path: Path,
) -> None:
    """Issue 18, item 1: two hosts on one gateway, overlapping points and a name used
    twice are errors, all in one run (exit 2); a unit polled by two devices and 4xxxx
    numbering are warnings (exit 0)."""
    cfg = tmp_path / "plant.yaml"
    cfg.write_text(
        "version: 1\n"
        "hosts:\n"
        "  - {name: gw, address: 192.0.2.10}\n"
        "  - {name: gw_again, address: 192.0.2.10}\n"
        "devices:\n"
        "  - name: meter\n    host: gw\n    unit: 1\n    points:\n"
        "      - {name: a, table: input, address: 0, type: float32}\n"
        "      - {name: b, table: input, address: 1, type: float32}\n"
        "  - name: meter\n    host: gw\n    unit: 2\n    points:\n"
        "      - {name: c, table: holding, address: 0, type: flaot32}\n"
    )
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert lines[0] == f"{cfg}: 4 problems in the configuration:"
    assert [line.split(": ", 2)[1] for line in lines[1:]] == [
        "hosts[1].address",
        "devices[0].points[1].address",
        "devices[1].name",
        "devices[1].points[0].type",
    ]
    assert "host 'gw_again' has the address and port of host 'gw' (hosts[0])" in lines[1]
    assert "point 'b' (input 1..2, float32) overlaps point 'a' (input 0..1, float32)" in lines[2]
    assert "unknown type 'flaot32' (did you mean 'float32'?)" in lines[4]

    cfg.write_text(
        "version: 1\n"
        "hosts:\n"
        "  - {name: gw, address: 192.0.2.10}\n"
        "devices:\n"
        "  - name: meter\n    host: gw\n    unit: 1\n    points:\n"
        "      - {name: a, table: holding, address: 40001, type: float32}\n"
        "  - name: meter_extra\n    host: gw\n    unit: 1\n    points:\n"
        "      - {name: b, table: coil, address: 0}\n"
    )
    result = _cli("check", "-c", str(cfg))
    assert result.returncode == 0, result.stderr
    warnings = [line for line in result.stdout.splitlines() if line.startswith("WARNING:")]
    assert warnings == [
        f"WARNING: {cfg}:9:44: devices[0].points[0].address: holding 40001 looks like a"
        ' manual\'s 1-based "4xxxx" register number (40001 is address 0): if so, write'
        " address: 0; a device whose registers really sit there (SunSpec) is right as written",
        f"WARNING: {cfg}:12:11: devices[1].unit: device 'meter_extra' polls unit 1 on host"
        " 'gw', as device 'meter' (devices[0]) does: one device split in two is fine;"
        " otherwise one of them has the wrong unit",
    ]
