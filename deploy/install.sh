#!/usr/bin/env bash
# Install modbus-mqtt-bridge as a systemd service, from a checkout or an unpacked release.
#
#   sudo deploy/install.sh              install or upgrade
#   sudo deploy/install.sh --serial     ... and let the service open serial ports
#   sudo deploy/install.sh --uninstall  remove the service and the venv, keep the config
#   deploy/install.sh --prefix DIR      install into DIR instead of / (no root needed)
#
# Running it again changes nothing unless the source has a new version (--reinstall
# forces the package in again). An existing /etc/modbus-bridge/config.yaml or env file
# is never touched. The service is enabled only once config.yaml is no longer the
# example (whose devices are made up) and passes `modbus-bridge check`: edit it, then
# run the script again.
set -euo pipefail

SERVICE_USER=modbus-bridge
VENV=/opt/modbus-bridge
ETC=/etc/modbus-bridge
UNIT_DIR=/etc/systemd/system
UNITS=(modbus-bridge.service modbus-bridge@.service)
PACKAGE=modbus-mqtt-bridge

usage() {
    cat <<EOF
usage: $0 [--prefix DIR] [--serial] [--reinstall] [--python PYTHON] [--uninstall]

Creates the system user '$SERVICE_USER', a virtual environment in $VENV holding
the bridge, $ETC/ with the example configuration (an existing config.yaml
is kept), and installs the systemd units. modbus-bridge.service is enabled once
$ETC/config.yaml is edited and passes 'modbus-bridge check': run the script
again after editing it.

  --prefix DIR     install below DIR (a scratch root) instead of /. Creating the user,
                   changing owners and talking to the running systemd are skipped and
                   printed instead; the unit is enabled with 'systemctl --root=DIR'.
                   The venv's scripts point into DIR: a staged tree is for checking,
                   not for copying onto a machine.
  --serial         also install the drop-in that lets the service open serial ports
                   (USB RS485 adapters): device access and the dialout group.
  --reinstall      install the package again even if this version is installed.
  --python PYTHON  interpreter for the venv (default: python3; needs 3.11 or newer).
  --uninstall      stop and disable the service, remove the units and $VENV;
                   keep $ETC and the user.
EOF
}

PREFIX=""
PYTHON=python3
UNINSTALL=0
SERIAL=0
REINSTALL=0
while [ $# -gt 0 ]; do
    case "$1" in
        --prefix) PREFIX="${2:?--prefix needs a directory}"; shift 2 ;;
        --prefix=*) PREFIX="${1#--prefix=}"; shift ;;
        --python) PYTHON="${2:?--python needs an interpreter}"; shift 2 ;;
        --python=*) PYTHON="${1#--python=}"; shift ;;
        --serial) SERIAL=1; shift ;;
        --reinstall) REINSTALL=1; shift ;;
        --uninstall) UNINSTALL=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
    esac
done

die() { echo "error: $*" >&2; exit 1; }
say() { echo "==> $*"; }
staged() { [ -n "$PREFIX" ]; }
# A step that needs the real machine: done for real, or printed under --prefix.
on_machine() {
    if staged; then
        echo "    skipped (--prefix): $*"
    else
        "$@"
    fi
}

if staged; then
    mkdir -p "$PREFIX"
    PREFIX="$(cd "$PREFIX" && pwd)"
    [ "$PREFIX" != / ] || PREFIX=""
fi
if ! staged && [ "$(id -u)" -ne 0 ]; then
    die "run as root (sudo $0 ...), or use --prefix DIR for a scratch install"
fi
R="$PREFIX" # every path below is written as $R/... so --prefix moves all of them

SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ ! -f "$SRC/pyproject.toml" ] || [ ! -f "$SRC/bridge/__init__.py" ]; then
    die "$SRC is not a modbus-mqtt-bridge checkout or unpacked release"
fi
VERSION="$(sed -n 's/^__version__ = "\(.*\)"$/\1/p' "$SRC/bridge/__init__.py")"
[ -n "$VERSION" ] || die "no __version__ in $SRC/bridge/__init__.py"

systemd_running() { [ -d /run/systemd/system ]; }

systemctl_root() {
    # Enable/disable by creating/removing the [Install] symlinks below the scratch root.
    if command -v systemctl >/dev/null; then
        systemctl --quiet --root="$PREFIX" "$@" 2>&1 | grep -v 'non-existent unit' || true
    else
        echo "    skipped (no systemctl here): systemctl --root=$PREFIX $*"
    fi
}

uninstall() {
    say "stopping and disabling the service"
    if staged; then
        systemctl_root disable "${UNITS[@]}"
    elif ! systemd_running; then
        systemctl --quiet disable "${UNITS[@]}" || true
    else
        # One call each: a unit that is already gone must not stop the others.
        systemctl disable --now modbus-bridge.service || true
        systemctl stop 'modbus-bridge@*.service' || true
        systemctl disable modbus-bridge@.service || true # every enabled instance
    fi
    say "removing the units and $VENV"
    for unit in "${UNITS[@]}"; do
        rm -f "$R$UNIT_DIR/$unit" "$R$UNIT_DIR/$unit.d/serial.conf"
        [ ! -d "$R$UNIT_DIR/$unit.d" ] || rmdir --ignore-fail-on-non-empty "$R$UNIT_DIR/$unit.d"
    done
    rm -rf "$R${VENV:?}"
    if staged; then
        on_machine systemctl daemon-reload
    elif systemd_running; then
        systemctl daemon-reload
    fi
    say "kept $ETC (your configuration and secrets) and the user $SERVICE_USER"
    echo "    to remove them too: rm -r $ETC && userdel $SERVICE_USER"
}

create_user() {
    if staged; then
        on_machine useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "modbus-mqtt-bridge" "$SERVICE_USER"
    elif id -u "$SERVICE_USER" >/dev/null 2>&1; then
        say "user $SERVICE_USER exists"
    else
        say "creating the system user $SERVICE_USER"
        useradd --system --user-group --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin --comment "modbus-mqtt-bridge" "$SERVICE_USER"
    fi
}

# The version installed in the venv, or nothing.
installed_version() {
    [ -x "$R$VENV/bin/python" ] || return 0
    # -I: only the venv counts (not the current directory, which may hold an egg-info).
    "$R$VENV/bin/python" -I - "$PACKAGE" <<'EOF' 2>/dev/null || true
import importlib.metadata, sys
try:
    print(importlib.metadata.version(sys.argv[1]))
except importlib.metadata.PackageNotFoundError:
    pass
EOF
}

CHANGED=0 # the package or a unit changed: a running service must be restarted

install_venv() {
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null ||
        die "$PYTHON is missing or older than 3.11 (Raspberry Pi OS Bookworm has 3.11: apt install python3)"
    if [ ! -x "$R$VENV/bin/python" ]; then
        "$PYTHON" -m venv --help >/dev/null 2>&1 || die "$PYTHON has no venv module: apt install python3-venv"
        say "creating the virtual environment $VENV"
        mkdir -p "$(dirname "$R$VENV")"
        "$PYTHON" -m venv "$R$VENV"
    fi
    local have
    have="$(installed_version)"
    if [ "$have" = "$VERSION" ] && [ "$REINSTALL" -eq 0 ]; then
        say "$PACKAGE $VERSION is installed in $VENV (--reinstall to install it again)"
        return
    fi
    say "installing $PACKAGE $VERSION into $VENV${have:+ (replacing $have)}"
    [ -z "$have" ] || "$R$VENV/bin/python" -m pip uninstall --quiet --yes "$PACKAGE"
    "$R$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "$SRC"
    # uvloop, a faster event loop, where a wheel exists (x86_64, aarch64): never compiled.
    "$R$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        --only-binary :all: "uvloop>=0.19" 2>/dev/null \
        || say "no uvloop wheel for this machine: the standard event loop is used"
    CHANGED=1
}

# copy_if_changed MODE SOURCE TARGET: copy when missing or different (then status 0),
# else leave the file alone (status 1), so a second run rewrites nothing.
copy_if_changed() {
    if [ -f "$3" ] && cmp -s "$2" "$3"; then
        chmod "$1" "$3"
        return 1
    fi
    install -D -m "$1" "$2" "$3"
    echo "    installed ${3#"$R"}"
}

write_env_template() {
    cat <<'EOF'
# Secrets for modbus-bridge, as VAR=value lines. systemd reads this file as root
# (mode 0600) and passes the variables to the service; use them in config.yaml as
# ${VAR}, e.g.  password: ${MQTT_PASSWORD}
#MQTT_USERNAME=bridge
#MQTT_PASSWORD=change-me
EOF
}

install_config() {
    say "configuration in $ETC"
    install -d -m 0750 "$R$ETC"
    on_machine chown "root:$SERVICE_USER" "$ETC"
    # The current example, for reference after an upgrade; config.yaml is yours.
    copy_if_changed 0640 "$SRC/config.example.yaml" "$R$ETC/config.example.yaml" || true
    if [ -e "$R$ETC/config.yaml" ]; then
        echo "    kept the existing $ETC/config.yaml"
    else
        install -m 0640 "$SRC/config.example.yaml" "$R$ETC/config.yaml"
        echo "    created $ETC/config.yaml from config.example.yaml: edit it"
    fi
    on_machine chown "root:$SERVICE_USER" "$ETC/config.yaml" "$ETC/config.example.yaml"
    if [ -e "$R$ETC/env" ]; then
        echo "    kept the existing $ETC/env"
    else
        (umask 077 && write_env_template >"$R$ETC/env")
        echo "    created $ETC/env (root only, mode 0600) for secrets"
    fi
    # Secrets stay readable by root only, whoever created the file.
    chmod 0600 "$R$ETC/env"
    on_machine chown root:root "$ETC/env"
}


install_units() {
    say "systemd units in $UNIT_DIR"
    for unit in "${UNITS[@]}"; do
        copy_if_changed 0644 "$SRC/deploy/systemd/$unit" "$R$UNIT_DIR/$unit" && CHANGED=1
        if [ "$SERIAL" -eq 1 ]; then
            copy_if_changed 0644 "$SRC/deploy/systemd/serial.conf" \
                "$R$UNIT_DIR/$unit.d/serial.conf" && CHANGED=1
        elif [ -e "$R$UNIT_DIR/$unit.d/serial.conf" ]; then
            echo "    kept the serial drop-in $UNIT_DIR/$unit.d/serial.conf"
        fi
    done
    if staged; then
        on_machine systemctl daemon-reload
    elif systemd_running; then
        systemctl daemon-reload
        if [ "$CHANGED" -eq 1 ]; then
            # An upgrade: running bridges pick up the new version; stopped ones stay stopped.
            systemctl try-restart modbus-bridge.service 'modbus-bridge@*.service'
        fi
    else
        # A chroot or an image being built: enabling (below) is for the next boot.
        echo "    systemd is not running here: nothing reloaded or restarted"
    fi
}

# `modbus-bridge check` on the installed configuration, with the secrets of the env file
# (VAR=value lines, as systemd reads them; never evaluated by a shell). Prints problems.
check_config() {
    "$R$VENV/bin/python" -I - "$R$ETC/env" "$R$VENV/bin/modbus-bridge" "$R$ETC/config.yaml" <<'EOF'
import os, subprocess, sys
env = dict(os.environ)
try:
    with open(sys.argv[1], encoding="utf-8") as f:
        lines = f.read().splitlines()
except OSError:
    lines = []
for line in lines:
    line = line.strip()
    if line and not line.startswith(("#", ";")) and "=" in line:
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
done = subprocess.run([sys.argv[2], "check", "-c", sys.argv[3]], env=env,
                      capture_output=True, text=True)
for line in (done.stderr if done.returncode else done.stdout).splitlines()[:40]:
    print("    " + line)
sys.exit(done.returncode)
EOF
}

ENABLED=0      # modbus-bridge.service is enabled (now or from before)
CONFIG_STATE="" # example | problems | ok

enable_service() {
    local out
    if cmp -s "$SRC/config.example.yaml" "$R$ETC/config.yaml"; then
        CONFIG_STATE=example
        say "not enabling modbus-bridge.service: $ETC/config.yaml is still the example"
        echo "    (its devices are made up); edit it, then run this script again"
    elif ! out="$(check_config 2>&1)"; then
        CONFIG_STATE=problems
        say "not enabling modbus-bridge.service: $ETC/config.yaml does not pass check:"
        echo "$out"
    else
        CONFIG_STATE=ok
        say "$ETC/config.yaml passes check: enabling modbus-bridge.service (started at boot)"
        if staged; then
            systemctl_root enable modbus-bridge.service
        else
            systemctl --quiet enable modbus-bridge.service
        fi
    fi
    if staged; then
        [ ! -e "$R$UNIT_DIR/multi-user.target.wants/modbus-bridge.service" ] || ENABLED=1
    elif systemctl --quiet is-enabled modbus-bridge.service 2>/dev/null; then
        ENABLED=1
    fi
    if [ "$CONFIG_STATE" != ok ] && [ "$ENABLED" -eq 1 ]; then
        echo "    it was enabled before and still is, but it will not start (exit 2)"
        echo "    until the configuration passes check"
    fi
}

serial_hint() {
    if [ -e "$R$UNIT_DIR/modbus-bridge.service.d/serial.conf" ]; then
        echo "Serial ports: the drop-in is installed; use /dev/serial/by-id/... paths."
    else
        echo "Serial ports (USB RS485): run this script again with --serial."
    fi
}

next_steps() {
    echo
    echo "modbus-mqtt-bridge $VERSION is installed${PREFIX:+ below $PREFIX}. Next:"
    if [ "$CONFIG_STATE" = ok ]; then
        cat <<EOF
  1. Start it:   sudo systemctl start modbus-bridge   (enabled: it starts at boot)
  2. Watch it:   journalctl -u modbus-bridge -f
  After editing $ETC/config.yaml: sudo $VENV/bin/modbus-bridge check -c $ETC/config.yaml,
  then sudo systemctl reload modbus-bridge.
EOF
    else
        cat <<EOF
  1. Edit $ETC/config.yaml (mqtt, hosts, devices); secrets go in $ETC/env.
     No hardware yet? '$VENV/bin/modbus-bridge sim -c $ETC/config.yaml' simulates it.
  2. Check it:   sudo $VENV/bin/modbus-bridge check -c $ETC/config.yaml
  3. Run this script again: it enables the service once the check passes
     (or by hand: sudo systemctl enable --now modbus-bridge).
  4. Watch it:   journalctl -u modbus-bridge -f
EOF
    fi
    serial_hint
    echo "Several bridges: $ETC/NAME.yaml and 'systemctl enable --now modbus-bridge@NAME'."
}

if [ "$UNINSTALL" -eq 1 ]; then
    uninstall
    exit 0
fi
create_user
install_venv
install_config
install_units
enable_service
next_steps
