"""deploy/install.sh, run for real.

Into a scratch root (--prefix): twice (the example configuration: the service is not
enabled), again after the user edited the configuration into one that fails `check` (not
enabled, the problems shown), again with a valid one that takes its password from the
env file (enabled), then uninstalled twice. Under --prefix the script does everything
that writes files (venv, package, /etc, units, the [Install] symlink via
`systemctl --root`) and prints
instead of doing what needs the real machine (useradd, chown, daemon-reload). The second
run must leave every file as it was: same content, mode and modification time.

Without --prefix, as root, in a private mount namespace whose /etc and /opt are copies:
the user, the owners and what the service user may read are real there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from release import REPO

from bridge import __version__

INSTALL = REPO / "deploy" / "install.sh"
SYSTEMD = REPO / "deploy" / "systemd"
ETC = Path("etc/modbus-bridge")
UNIT_DIR = Path("etc/systemd/system")
BINARY = Path("opt/modbus-bridge/bin/modbus-bridge")

Snapshot = dict[str, tuple[str, int, str, int]]


def install(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(INSTALL), "--python", sys.executable, *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def snapshot(root: Path) -> Snapshot:
    """Every path below root: kind, permission bits, content hash or link target, mtime."""
    tree: Snapshot = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        if path.is_symlink():
            tree[str(path.relative_to(root))] = ("link", 0, os.readlink(path), 0)
        elif path.is_dir():
            tree[str(path.relative_to(root))] = ("dir", st.st_mode & 0o7777, "", 0)
        else:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            tree[str(path.relative_to(root))] = (
                "file",
                st.st_mode & 0o7777,
                digest,
                st.st_mtime_ns,
            )
    return tree


@dataclass
class Scenario:
    """One scratch root through a user's life with install.sh (all output and state kept)."""

    root: Path
    first: str = ""  # install --serial
    after_first: Snapshot = field(default_factory=dict)
    second: str = ""  # install --serial again
    after_second: Snapshot = field(default_factory=dict)
    version: str = ""  # the installed command, before the uninstall
    check: subprocess.CompletedProcess[str] | None = None
    verify: subprocess.CompletedProcess[str] | None = None
    rerun: str = ""  # after the user edited config.yaml and env (loosened to 0644)
    after_rerun: Snapshot = field(default_factory=dict)
    enabled: str = ""  # after the user made config.yaml valid
    after_enabled: Snapshot = field(default_factory=dict)
    uninstall: str = ""
    after_uninstall: Snapshot = field(default_factory=dict)
    uninstall_again: str = ""


MY_CONFIG = "version: 1\n# my plant\n"
MY_ENV = "MQTT_PASSWORD=secret\n"
# The example, edited: a password that only the env file has (check must read it there).
MY_VALID = (
    (REPO / "config.example.yaml")
    .read_text()
    .replace("client_id: modbus-bridge ", "client_id: my-plant     ")
    .replace("password: ${MQTT_PASSWORD:-}", "password: ${MQTT_PASSWORD}  ")
)
WANTS = UNIT_DIR / "multi-user.target.wants" / "modbus-bridge.service"


@pytest.fixture(scope="module")
def life(tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    s = Scenario(tmp_path_factory.mktemp("stage") / "root")
    root = s.root
    s.first = install("--prefix", root, "--serial").stdout
    s.after_first = snapshot(root)
    s.second = install("--prefix", root, "--serial").stdout
    s.after_second = snapshot(root)

    s.version = run(root / BINARY, "--version").stdout.strip()
    s.check = run(root / BINARY, "check", "-c", root / ETC / "config.yaml")
    analyze = shutil.which("systemd-analyze")
    if analyze is not None:
        # The installed unit, with /opt read below the prefix: the binary it names exists.
        unit = root.parent / "modbus-bridge.service"
        text = (root / UNIT_DIR / "modbus-bridge.service").read_text()
        unit.write_text(text.replace("/opt/modbus-bridge/", f"{root}/opt/modbus-bridge/"))
        s.verify = run(analyze, "verify", unit)

    (root / ETC / "config.yaml").write_text(MY_CONFIG)
    (root / ETC / "env").write_text(MY_ENV)
    (root / ETC / "env").chmod(0o644)
    s.rerun = install("--prefix", root).stdout
    s.after_rerun = snapshot(root)
    assert "my-plant" in MY_VALID and "${MQTT_PASSWORD}  " in MY_VALID
    (root / ETC / "config.yaml").write_text(MY_VALID)
    s.enabled = install("--prefix", root).stdout
    s.after_enabled = snapshot(root)
    s.uninstall = install("--prefix", root, "--uninstall").stdout
    s.after_uninstall = snapshot(root)
    s.uninstall_again = install("--prefix", root, "--uninstall").stdout
    return s


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, check=False)


def test_second_run_changes_nothing(life: Scenario) -> None:
    assert life.after_second == life.after_first
    assert f"modbus-mqtt-bridge {__version__} is installed in /opt/modbus-bridge" in life.second
    assert "kept the existing /etc/modbus-bridge/config.yaml" in life.second
    assert "installed /etc" not in life.second


def test_installs_a_venv_that_runs_the_example_config(life: Scenario) -> None:
    assert life.version == f"modbus-bridge {__version__}"
    assert life.check is not None
    assert life.check.returncode == 0, life.check.stderr
    assert "configuration OK" in life.check.stdout


def test_config_dir_holds_the_example_and_a_root_only_secrets_file(life: Scenario) -> None:
    tree = life.after_first
    example = hashlib.sha256((REPO / "config.example.yaml").read_bytes()).hexdigest()
    assert tree[str(ETC)][:2] == ("dir", 0o750)
    assert tree[str(ETC / "config.yaml")][:3] == ("file", 0o640, example)
    assert tree[str(ETC / "config.example.yaml")][:3] == ("file", 0o640, example)
    assert tree[str(ETC / "env")][:2] == ("file", 0o600)


def test_units_and_serial_drop_ins_are_installed_and_enabled(life: Scenario) -> None:
    tree = life.after_first
    for unit, source in (
        ("modbus-bridge.service", "modbus-bridge.service"),
        ("modbus-bridge@.service", "modbus-bridge@.service"),
        ("modbus-bridge.service.d/serial.conf", "serial.conf"),
        ("modbus-bridge@.service.d/serial.conf", "serial.conf"),
    ):
        digest = hashlib.sha256((SYSTEMD / source).read_bytes()).hexdigest()
        assert tree[str(UNIT_DIR / unit)][:3] == ("file", 0o644, digest), unit
    # Not enabled while config.yaml is the example (its devices are made up), nor while
    # it fails check; enabled once it passes.
    assert str(WANTS) not in tree
    assert "is still the example" in life.first
    assert str(WANTS) not in life.after_rerun
    assert "does not pass check:" in life.rerun
    assert "problem" in life.rerun  # the problems themselves, with their lines
    assert "passes check: enabling modbus-bridge.service" in life.enabled
    if shutil.which("systemctl") is None:
        pytest.skip("no systemctl: install.sh printed the enable step instead")
    link = ("link", 0, "/etc/systemd/system/modbus-bridge.service", 0)
    assert life.after_enabled[str(WANTS)] == link


def test_installed_unit_names_the_installed_binary(life: Scenario) -> None:
    if life.verify is None:
        pytest.skip("systemd-analyze is not installed")
    assert (life.verify.returncode, life.verify.stdout + life.verify.stderr) == (0, "")


def test_prints_what_it_skipped_and_the_next_steps(life: Scenario) -> None:
    assert "skipped (--prefix): useradd --system" in life.first
    assert "skipped (--prefix): chown root:modbus-bridge /etc/modbus-bridge" in life.first
    assert "skipped (--prefix): systemctl daemon-reload" in life.first
    assert "created /etc/modbus-bridge/config.yaml from config.example.yaml" in life.first
    for step in (
        "modbus-bridge check -c /etc/modbus-bridge/config.yaml",
        "modbus-bridge sim -c /etc/modbus-bridge/config.yaml",
        "Run this script again: it enables the service once the check passes",
        "journalctl -u modbus-bridge -f",
    ):
        assert step in life.first
    assert "systemctl start modbus-bridge" in life.enabled


def test_rerun_keeps_the_users_config_and_locks_the_secrets(life: Scenario) -> None:
    assert "kept the existing /etc/modbus-bridge/config.yaml" in life.rerun
    tree = life.after_rerun
    assert tree[str(ETC / "config.yaml")][2] == hashlib.sha256(MY_CONFIG.encode()).hexdigest()
    assert tree[str(ETC / "env")][:3] == (
        "file",
        0o600,
        hashlib.sha256(MY_ENV.encode()).hexdigest(),
    )
    # Without --serial the drop-ins a former --serial run installed stay.
    assert str(UNIT_DIR / "modbus-bridge.service.d" / "serial.conf") in tree


def test_uninstall_removes_the_service_and_keeps_the_config(life: Scenario) -> None:
    assert "kept /etc/modbus-bridge" in life.uninstall
    left = set(life.after_uninstall)
    assert not [p for p in left if p.startswith("opt/modbus-bridge")]
    assert not [p for p in left if "modbus-bridge" in p and p.startswith(str(UNIT_DIR))]
    assert {k: v for k, v in life.after_enabled.items() if k.startswith(str(ETC))} == {
        k: v for k, v in life.after_uninstall.items() if k.startswith(str(ETC))
    }
    assert "kept /etc/modbus-bridge" in life.uninstall_again


def test_refuses_unknown_options_and_an_old_python(tmp_path: Path) -> None:
    result = install("--prefix", tmp_path, "--frobnicate", check=False)
    assert result.returncode == 2
    assert "unknown option: --frobnicate" in result.stderr
    result = install("--prefix", tmp_path, "--python", "/nonexistent/python3", check=False)
    assert result.returncode == 1
    assert "missing or older than 3.11" in result.stderr


def test_install_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck is not installed (make test installs it)")
    result = subprocess.run([shellcheck, INSTALL], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


# install.sh without --prefix, as root on a "machine" whose /etc and /opt are scratch
# copies bind-mounted in a private mount namespace: useradd, chown and the permissions the
# service user gets are real, and the host is not touched (the script refuses to go on
# unless both mounts are in place). systemd is not running here, so the script takes its
# "enable for the next boot" path.
NAMESPACED = r"""
set -euo pipefail
scratch=$1 install=$2 python=$3
mount --bind "$scratch/etc" /etc
mount --bind "$scratch/opt" /opt
if [ ! -e /etc/.scratch-copy ] || [ ! -e /opt/.scratch-copy ]; then
    echo "the scratch mounts are not in place" >&2
    exit 99
fi
out=$scratch/out
bash "$install" --python "$python" --serial >"$out/first" 2>&1
bash "$install" --python "$python" --serial >"$out/second" 2>&1
getent passwd modbus-bridge >"$out/passwd"
stat -c '%U:%G %a %n' /etc/modbus-bridge /etc/modbus-bridge/* >"$out/perms"
runuser -u modbus-bridge -- /opt/modbus-bridge/bin/modbus-bridge check \
    -c /etc/modbus-bridge/config.yaml >"$out/check" 2>&1 || echo "exit $?" >>"$out/check"
runuser -u modbus-bridge -- cat /etc/modbus-bridge/env >"$out/env-as-user" 2>&1 || true
bash "$install" --uninstall >"$out/uninstall" 2>&1
ls -A /opt >"$out/left-opt"
ls -A /etc/systemd/system >"$out/left-units"
ls -A /etc/modbus-bridge >"$out/left-etc"
"""


def test_real_install_as_root_in_a_private_mount_namespace(tmp_path: Path) -> None:
    debian_python = Path("/usr/bin/python3")
    tools = [shutil.which(t) for t in ("unshare", "runuser", "useradd", "getent")]
    if os.geteuid() != 0 or None in tools or not debian_python.exists():
        pytest.skip("needs root, unshare, runuser, useradd and /usr/bin/python3")
    before = (Path("/opt/modbus-bridge").exists(), Path("/etc/modbus-bridge").exists())
    shutil.copytree("/etc", tmp_path / "etc", symlinks=True)
    (tmp_path / "opt").mkdir()
    for copy in ("etc", "opt"):
        (tmp_path / copy / ".scratch-copy").touch()
    (tmp_path / "out").mkdir()
    # The system Python, as on Raspberry Pi OS: the service user can run it (a pyenv
    # interpreter under /root could not).
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "bash", "-c", NAMESPACED, "-",
         str(tmp_path), str(INSTALL), str(debian_python)],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    if result.returncode != 0 and "unshare failed" in result.stderr:
        pytest.skip(f"no mount namespaces here: {result.stderr.strip()}")
    out = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert result.returncode == 0, result.stderr + "\n".join(out.values())

    assert "creating the system user modbus-bridge" in out["first"]
    assert "user modbus-bridge exists" in out["second"]
    assert "installed /" not in out["second"], out["second"]
    assert out["passwd"].endswith(":/nonexistent:/usr/sbin/nologin\n")
    assert sorted(out["perms"].splitlines()) == [
        "root:modbus-bridge 640 /etc/modbus-bridge/config.example.yaml",
        "root:modbus-bridge 640 /etc/modbus-bridge/config.yaml",
        "root:modbus-bridge 750 /etc/modbus-bridge",
        "root:root 600 /etc/modbus-bridge/env",
    ]
    # The service user reads its configuration and runs the bridge, but not the secrets.
    assert "configuration OK" in out["check"], out["check"]
    assert "Permission denied" in out["env-as-user"]
    assert "MQTT_PASSWORD" not in out["env-as-user"]
    # Uninstalled: venv and units gone, the configuration kept.
    assert out["left-opt"].split() == [".scratch-copy"]
    assert "modbus-bridge" not in out["left-units"]
    assert out["left-etc"].split() == ["config.example.yaml", "config.yaml", "env"]
    # Nothing of this reached the real machine.
    assert (Path("/opt/modbus-bridge").exists(), Path("/etc/modbus-bridge").exists()) == before
