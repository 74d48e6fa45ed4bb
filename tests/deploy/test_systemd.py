"""The systemd units in deploy/systemd: valid for systemd, hardened, and true to the exit codes.

`systemd-analyze verify` also checks that every ExecStart=/ExecStartPre= binary exists and
is executable. The units name /opt/modbus-bridge/bin/modbus-bridge, which exists only on
an installed machine, so the units are verified as rendered with that one path replaced by
the `modbus-bridge` entry point of the virtual environment running these tests (the same
console script install.sh puts in /opt). The test checks that the path is the only thing
that differs. tests/deploy/test_install.py verifies the units install.sh installed against
the venv it created.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.config_features import state_file_for
from bridge.model import Sparkplug

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "deploy" / "systemd"
UNITS = ("modbus-bridge.service", "modbus-bridge@.service")
INSTALLED_BINARY = "/opt/modbus-bridge/bin/modbus-bridge"
MAX_EXPOSURE = 3.0

# Keys that are the same in both units: everything except what names the instance.
PER_UNIT_KEYS = {
    "Description", "EnvironmentFile", "ExecStartPre", "ExecStart", "SyslogIdentifier",
    "StateDirectory",
}  # fmt: skip


def analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze is not installed")
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value given (systemd keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def rendered(unit: str, directory: Path) -> Path:
    """The unit with the installed binary's path replaced by this venv's entry point."""
    entry_point = Path(sys.executable).parent / "modbus-bridge"
    assert entry_point.exists(), f"{entry_point} missing: install the package (make test does)"
    text = (SYSTEMD / unit).read_text()
    assert text.count(INSTALLED_BINARY) == 2, "ExecStartPre and ExecStart name the binary"
    target = directory / unit
    target.write_text(text.replace(INSTALLED_BINARY, str(entry_point)))
    return target


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=60, check=False
    )


def exposure(output: str) -> float:
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", output)
    assert match, output
    return float(match.group(1))


@pytest.mark.parametrize("unit", UNITS)
def test_unit_passes_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    result = run(analyze(), "verify", rendered(unit, tmp_path))
    # verify exits 0 on unknown keys or bad values and only prints them: demand silence.
    assert result.returncode == 0, result.stderr
    assert result.stdout + result.stderr == ""


def test_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    """The check above can fail: the unit as shipped names a binary this machine lacks."""
    if Path(INSTALLED_BINARY).exists():
        pytest.skip(f"{INSTALLED_BINARY} exists on this machine")
    shutil.copy(SYSTEMD / "modbus-bridge.service", tmp_path)
    result = run(analyze(), "verify", tmp_path / "modbus-bridge.service")
    assert result.returncode != 0
    assert f"Command {INSTALLED_BINARY} is not executable" in result.stderr


def staged_root(tmp_path: Path, *, serial: bool) -> Path:
    """A root directory with the units (and the serial drop-in) where install.sh puts them."""
    unit_dir = tmp_path / "root" / "etc" / "systemd" / "system"
    unit_dir.mkdir(parents=True)
    for unit in UNITS:
        shutil.copy(SYSTEMD / unit, unit_dir)
        if serial:
            (unit_dir / f"{unit}.d").mkdir()
            shutil.copy(SYSTEMD / "serial.conf", unit_dir / f"{unit}.d")
    return tmp_path / "root"


@pytest.mark.parametrize("serial", [False, True], ids=["tcp-only", "serial-drop-in"])
@pytest.mark.parametrize("unit", ["modbus-bridge.service", "modbus-bridge@north.service"])
def test_security_exposure_is_at_most_3(unit: str, serial: bool, tmp_path: Path) -> None:
    root = staged_root(tmp_path, serial=serial)
    result = run(analyze(), "security", "--offline=true", f"--root={root}", "--no-pager", unit)
    assert result.returncode == 0, result.stderr
    score = exposure(result.stdout)
    print(f"{unit} ({'with' if serial else 'without'} serial.conf): exposure {score}")
    assert score <= MAX_EXPOSURE, result.stdout
    # The drop-in really applied (the score would hide a drop-in systemd never read).
    private_devices = next(line for line in result.stdout.splitlines() if "PrivateDevices=" in line)
    assert private_devices.startswith("✗" if serial else "✓"), private_devices


@pytest.mark.parametrize("unit", UNITS)
def test_restart_policy_matches_the_exit_codes(unit: str) -> None:
    """Exit 1 (core task died, shutdown hung) restarts; exit 2 (bad configuration) does not.

    RestartPreventExitStatus= is tested by systemd against the main process only; a failing
    ExecStartPre= would be restarted in a loop. So `check` must be allowed to fail ("-")
    and `run` must check the same file itself (it exits 2 on a bad configuration:
    tests/integration/test_cli.py).
    """
    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    assert service["Restart"] == ["on-failure"]
    assert service["RestartPreventExitStatus"] == ["2"]
    assert service["KillSignal"] == ["SIGTERM"]
    (pre,) = service["ExecStartPre"]
    (start,) = service["ExecStart"]
    assert pre.startswith("-" + INSTALLED_BINARY + " check -c ")
    assert start.startswith(INSTALLED_BINARY + " run -c ")
    assert pre.split(" -c ")[1] == start.split(" -c ")[1], "check and run read one file"
    assert float(service["TimeoutStopSec"][0]) > 5, "the bridge needs up to 4.8 s to stop"


@pytest.mark.parametrize("unit", UNITS)
def test_reload_sends_sighup_to_the_bridge(unit: str) -> None:
    """`systemctl reload` sends SIGHUP to the main process: the bridge re-reads its file
    (tests/integration/test_reload.py)."""
    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    assert service["ExecReload"] == ["/bin/kill -HUP $MAINPID"]


@pytest.mark.parametrize("unit", UNITS)
def test_ready_when_the_bridge_says_so_and_watched(unit: str) -> None:
    """Type=notify with the main process's READY=1 and WATCHDOG=1 (tests/integration/
    test_notify.py runs the bridge against a NOTIFY_SOCKET of its own); the notify socket
    is an AF_UNIX datagram socket, which the unit's address families allow."""
    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert int(service["WatchdogSec"][0]) >= 20  # the bridge pings at half of it
    assert "AF_UNIX" in service["RestrictAddressFamilies"][0].split()


@pytest.mark.parametrize("unit", UNITS)
def test_runs_as_the_service_user_with_secrets_from_a_root_file(unit: str) -> None:
    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    assert service["User"] == ["modbus-bridge"]
    assert service["Group"] == ["modbus-bridge"]
    assert "-/etc/modbus-bridge/env" in service["EnvironmentFile"]
    assert service["CapabilityBoundingSet"] == [""]
    assert service["PrivateDevices"] == ["yes"]
    assert "DynamicUser" not in service


def test_template_has_the_same_hardening_as_the_single_unit() -> None:
    single = parse_unit((SYSTEMD / "modbus-bridge.service").read_text())
    template = parse_unit((SYSTEMD / "modbus-bridge@.service").read_text())
    for section in ("Unit", "Service", "Install"):
        mine = {k: v for k, v in single[section].items() if k not in PER_UNIT_KEYS}
        theirs = {k: v for k, v in template[section].items() if k not in PER_UNIT_KEYS}
        assert mine == theirs, section
    assert template["Service"]["ExecStart"] == [
        INSTALLED_BINARY + " run -c /etc/modbus-bridge/%i.yaml"
    ]
    assert "-/etc/modbus-bridge/%i.env" in template["Service"]["EnvironmentFile"]


def test_serial_drop_in_opens_only_serial_devices() -> None:
    service = parse_unit((SYSTEMD / "serial.conf").read_text())["Service"]
    assert service["PrivateDevices"] == ["no"]
    assert service["DevicePolicy"] == ["closed"]
    assert service["SupplementaryGroups"] == ["dialout"]
    assert all(v.startswith("char-tty") and v.endswith(" rw") for v in service["DeviceAllow"])


@pytest.mark.parametrize("unit", UNITS)
def test_the_descriptor_limit_leaves_room_for_hosts_and_metrics_clients(unit: str) -> None:
    """Issue 16: the metrics port must never take the descriptors the bridge's own links
    need. The unit sets the limit (setrlimit is in @resources, which the unit filters)."""
    from bridge.metrics import connection_cap

    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    (limit,) = service["LimitNOFILE"]
    assert ":" not in limit  # soft = hard: nothing for the bridge to raise
    assert "~@privileged @resources" in service["SystemCallFilter"]
    assert connection_cap(int(limit)) == 64 and int(limit) >= 4096


@pytest.mark.parametrize("unit", UNITS)
def test_the_state_folder_is_writable_and_is_where_the_bridge_keeps_its_state(unit: str) -> None:
    """ProtectSystem=strict makes /var/lib read-only: without StateDirectory= neither a
    buffer under /var/lib/modbus-bridge nor the Sparkplug bdSeq could be written. systemd
    names the folder in $STATE_DIRECTORY, the bdSeq's default place."""
    service = parse_unit((SYSTEMD / unit).read_text())["Service"]
    [state] = service["StateDirectory"]
    assert state.split("/")[0] == "modbus-bridge"
    folder = "/var/lib/" + state.replace("%i", "site")
    where = state_file_for(Sparkplug("plant", "line-1"), None, {"STATE_DIRECTORY": folder})
    assert os.path.dirname(where) == folder
