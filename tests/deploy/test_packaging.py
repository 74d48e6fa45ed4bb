"""Packaging: `python -m build` makes an sdist and a wheel that install and run.

The wheel goes into a fresh virtual environment (its dependencies from the package
index, as a user gets them) and through `pipx install`, and the installed command must
report the one version the project has: `bridge.__version__`.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
from release import REPO, Dist

from bridge import __version__

PROFILES = sorted((REPO / "bridge" / "profiles").glob("*/*.yaml"))


def run(*args: str | Path, env: dict[str, str] | None = None) -> str:
    result = subprocess.run(
        [str(a) for a in args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env=env,
    )
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    return result.stdout


def test_the_version_lives_in_one_place() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "bridge.__version__"}


def test_artifacts_carry_the_version(dist: Dist) -> None:
    assert dist.sdist.name == f"modbus_mqtt_bridge-{__version__}.tar.gz"
    assert dist.wheel.name == f"modbus_mqtt_bridge-{__version__}-py3-none-any.whl"


def test_sdist_carries_the_example_config_docs_and_deploy(dist: Dist) -> None:
    top = f"modbus_mqtt_bridge-{__version__}"
    with tarfile.open(dist.sdist) as sdist:
        names = set(sdist.getnames())
        example = sdist.extractfile(f"{top}/config.example.yaml")
        assert example is not None
        assert example.read() == (REPO / "config.example.yaml").read_bytes()
    for path in (
        "config.example.yaml",
        "README.md",
        "CHANGELOG.md",
        "docs/commands.md",
        "deploy/install.sh",
        "deploy/raspberry-pi.md",
        "deploy/systemd/modbus-bridge.service",
        "deploy/systemd/modbus-bridge@.service",
        "deploy/systemd/serial.conf",
        "deploy/docker/Dockerfile",
        "deploy/node-red/flows.json",
        "bridge/cli.py",
        "bridge/profiles/eastron/sdm630.yaml",
    ):
        assert f"{top}/{path}" in names, path
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


def test_install_script_stays_executable_in_the_sdist(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        member = sdist.getmember(f"modbus_mqtt_bridge-{__version__}/deploy/install.sh")
    assert member.mode & 0o111


def test_wheel_holds_the_package_and_the_command(dist: Dist) -> None:
    with zipfile.ZipFile(dist.wheel) as wheel:
        names = wheel.namelist()
        info = f"modbus_mqtt_bridge-{__version__}.dist-info"
        entry_points = wheel.read(f"{info}/entry_points.txt").decode()
    assert "bridge/cli.py" in names and "bridge/sim.py" in names
    # the device profiles are package data: every one of them is in the wheel
    profiles = {f"bridge/{p.relative_to(REPO / 'bridge').as_posix()}" for p in PROFILES}
    assert len(profiles) >= 15 and profiles <= set(names)
    assert not [n for n in names if n.startswith(("tests/", "deploy/"))]
    assert "modbus-bridge = bridge.cli:main" in entry_points


def test_wheel_installs_in_a_fresh_venv_and_runs(dist: Dist, tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    # An empty venv (no pip of its own: this interpreter's pip installs into it; faster).
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    run(sys.executable, "-m", "pip", "--python", python, "install", "--quiet", dist.wheel)
    frozen = run(sys.executable, "-m", "pip", "--python", python, "freeze").splitlines()
    names = (re.split(r"[=@ ]", line, maxsplit=1)[0] for line in frozen)
    installed = {name.lower().replace("_", "-") for name in names}
    runtime = {"pymodbus", "aiomqtt", "pyyaml", "tenacity", "prometheus-client"}
    assert installed >= {"modbus-mqtt-bridge", *runtime}
    assert not installed & {"pytest", "ruff", "mypy", "build", "pipx"}, "the venv is clean"
    assert run(venv / "bin" / "modbus-bridge", "--version").strip() == (
        f"modbus-bridge {__version__}"
    )
    # The installed command accepts the example configuration shipped in the sdist.
    with tarfile.open(dist.sdist) as sdist:
        sdist.extract(f"modbus_mqtt_bridge-{__version__}/config.example.yaml", tmp_path)
    example = tmp_path / f"modbus_mqtt_bridge-{__version__}" / "config.example.yaml"
    assert "configuration OK" in run(venv / "bin" / "modbus-bridge", "check", "-c", example)
    # ... and finds its profiles where it is installed
    listed = run(venv / "bin" / "modbus-bridge", "profiles")
    assert all(f"{p.parent.name}/{p.stem} " in listed for p in PROFILES)
    assert str(venv) in run(venv / "bin" / "modbus-bridge", "profiles", "show", "eastron/sdm630")


def test_pipx_installs_the_wheel(dist: Dist, tmp_path: Path) -> None:
    pytest.importorskip("pipx", reason="pipx is in the [test] extra; make test installs it")
    env = {
        **os.environ,
        "PIPX_HOME": str(tmp_path / "pipx"),
        "PIPX_BIN_DIR": str(tmp_path / "bin"),
        "PIPX_MAN_DIR": str(tmp_path / "man"),
    }
    run(sys.executable, "-m", "pipx", "install", dist.wheel, env=env)
    command = tmp_path / "bin" / "modbus-bridge"
    assert run(command, "--version", env=env).strip() == f"modbus-bridge {__version__}"


def test_the_readmes_install_line_installs_the_wheel_with_uvloop(
    dist: Dist, tmp_path: Path
) -> None:
    """The Quick start's install line for the wheel, as written (X.Y.Z the version), in a
    fresh venv: the bridge and uvloop come in, and the bridge runs on uvloop."""
    readme = (REPO / "README.md").read_text()
    quick = readme[readme.index("## Quick start") : readme.index("## Why")]
    [line] = [ln for ln in quick.splitlines() if ln.startswith("pip install './modbus_mqtt")]
    assert "pip install '.[uvloop]'" in quick  # the same from the source folder
    requirement = line.split("'")[1].replace("X.Y.Z", __version__).removeprefix("./")
    (tmp_path / dist.wheel.name).write_bytes(dist.wheel.read_bytes())
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    pip = (sys.executable, "-m", "pip", "--python", python)
    subprocess.run([*pip, "install", "--quiet", requirement], cwd=tmp_path, check=True)
    frozen = run(*pip, "freeze").lower()
    assert "modbus-mqtt-bridge" in frozen.replace("_", "-") and "uvloop" in frozen
    env = {k: v for k, v in os.environ.items() if k != "BRIDGE_EVENT_LOOP"}
    choice = "from bridge.process import event_loop_choice as c; print(c())"
    loop = run(python, "-c", choice, env=env)
    assert loop.strip() == "uvloop"


def test_license_and_project_urls_travel_with_the_release(dist: Dist) -> None:
    """MIT in a LICENSE file (sdist and wheel), project URLs in the metadata, and the one
    home the docs send people to: the Source URL deploy/raspberry-pi.md clones."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT"
    assert (REPO / "LICENSE").read_text().startswith("MIT License")
    urls = project["urls"]
    assert set(urls) >= {"Homepage", "Source", "Issues", "Changelog"}
    home = urls["Source"]
    assert f"git clone {home}.git" in (REPO / "deploy" / "raspberry-pi.md").read_text()
    assert home in (REPO / "README.md").read_text()
    assert all(u.startswith(home) for u in urls.values())
    top = f"modbus_mqtt_bridge-{__version__}"
    with tarfile.open(dist.sdist) as sdist:
        assert f"{top}/LICENSE" in sdist.getnames()
    with zipfile.ZipFile(dist.wheel) as wheel:
        info = f"modbus_mqtt_bridge-{__version__}.dist-info"
        assert f"{info}/licenses/LICENSE" in wheel.namelist()
        metadata = wheel.read(f"{info}/METADATA").decode()
    assert "License-Expression: MIT" in metadata
    assert f"Project-URL: Source, {home}" in metadata
