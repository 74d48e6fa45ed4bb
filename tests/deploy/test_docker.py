"""deploy/docker: what can be checked without a container daemon (there is none here).

The image cannot be built on this machine, so the checks follow the Dockerfile: the build
stage's COPY lines are replayed from the repository into a scratch directory and its
`pip wheel` command is run there (a file the stage forgets to copy fails the build); the
final stage runs an entry point the wheel really provides, with arguments the CLI
accepts, as a user that is not root, and installs no compiler.
"""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from release import Dist

from bridge import __version__
from bridge.cli import build_parser, cmd_run

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "deploy" / "docker"


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [args for kw, args in self.instructions if kw == keyword]


def parse_dockerfile(text: str) -> tuple[dict[str, str], list[Stage]]:
    """Global ARG defaults and the stages, with `${ARG}` in FROM lines substituted."""
    logical: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        logical.append(pending + line)
        pending = ""
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical:
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif keyword == "FROM":
            base = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], rest)
            image, _, alias = base.partition(" AS ")
            stages.append(Stage(image.strip(), alias.strip() or None))
        else:
            stages[-1].instructions.append((keyword, rest))
    return args, stages


@pytest.fixture(scope="module")
def dockerfile() -> list[Stage]:
    _, stages = parse_dockerfile((DOCKER / "Dockerfile").read_text())
    return stages


@pytest.fixture(scope="module")
def docker_wheel(dockerfile: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel the build stage makes, from only the files the stage copies."""
    build = dockerfile[0]
    workdir = tmp_path_factory.mktemp("context") / build.all("WORKDIR")[-1].lstrip("/")
    workdir.mkdir(parents=True)
    for copy in build.all("COPY"):
        *sources, dest = shlex.split(copy)
        for source in sources:
            origin, target = REPO / source, workdir / dest
            if origin.is_dir():
                shutil.copytree(origin, target, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                target.mkdir(parents=True, exist_ok=True)
                shutil.copy(origin, target)
    (run,) = build.all("RUN")
    command = shlex.split(run)
    assert command[:2] == ["pip", "wheel"], run
    out = tmp_path_factory.mktemp("wheels")
    command = [str(out) if arg == "/wheels" else arg for arg in command]
    result = subprocess.run(
        [sys.executable, "-m", *command],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = out.glob("*.whl")
    return wheel


def test_build_stage_builds_the_release_wheel(docker_wheel: Path, dist: Dist) -> None:
    """Same files and metadata as `python -m build` makes (a missing README, say, would
    still build, with an empty description)."""
    assert docker_wheel.name == dist.wheel.name
    assert docker_wheel.name == f"modbus_mqtt_bridge-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(docker_wheel) as mine, zipfile.ZipFile(dist.wheel) as release:
        assert sorted(mine.namelist()) == sorted(release.namelist())
        metadata = f"modbus_mqtt_bridge-{__version__}.dist-info/METADATA"
        assert mine.read(metadata) == release.read(metadata)


def test_final_stage_runs_an_entry_point_the_wheel_provides(
    dockerfile: list[Stage], docker_wheel: Path
) -> None:
    final = dockerfile[-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    (cmd,) = final.all("CMD")
    program, *entry_args = json.loads(entrypoint)  # exec form: SIGTERM reaches the bridge
    with zipfile.ZipFile(docker_wheel) as wheel:
        (entry_points,) = [n for n in wheel.namelist() if n.endswith("entry_points.txt")]
        scripts = wheel.read(entry_points).decode()
    assert f"{program} = bridge.cli:main" in scripts
    args = build_parser().parse_args([*entry_args, *json.loads(cmd)])
    assert args.func is cmd_run
    assert args.config == "/etc/modbus-bridge/config.yaml"


def test_final_stage_is_slim_non_root_and_stops_on_sigterm(dockerfile: list[Stage]) -> None:
    build, final = dockerfile
    assert "slim" in final.base and final.base == build.base
    assert final.all("STOPSIGNAL") == ["SIGTERM"]
    users = final.all("USER")
    assert users and users[-1] not in ("root", "0"), users
    # The USER line comes after every RUN: nothing at run time is root.
    last_run = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "RUN")
    last_user = max(i for i, (kw, _) in enumerate(final.instructions) if kw == "USER")
    assert last_user > last_run
    # Only the wheels come from the build stage; no compiler or package manager install.
    assert [c for c in final.all("COPY") if "--from" in c] == ["--from=build /wheels/ /tmp/wheels/"]
    runs = " ".join(final.all("RUN"))
    for word in ("apt-get", "gcc", "build-essential", "pip wheel"):
        assert word not in runs


def test_final_stage_installs_uvloop_as_the_extra_names_it(dockerfile: list[Stage]) -> None:
    """The image runs on uvloop where a wheel exists: the same requirement as the
    `uvloop` extra, binary only (no compiler in the image), and a fallback otherwise."""
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (requirement,) = pyproject["project"]["optional-dependencies"]["uvloop"]
    runs = " ".join(dockerfile[-1].all("RUN"))
    assert f'--only-binary :all: "{requirement}"' in runs
    assert "|| echo" in runs  # 32-bit arm: no wheel, and the image still builds


def test_compose_mounts_the_config_read_only_next_to_mosquitto() -> None:
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert services["mosquitto"]["image"].startswith("eclipse-mosquitto:")
    bridge = services["bridge"]
    assert (DOCKER / bridge["build"]["context"]).resolve() == REPO
    assert (REPO / bridge["build"]["dockerfile"]).resolve() == DOCKER / "Dockerfile"
    assert "./config.yaml:/etc/modbus-bridge/config.yaml:ro" in bridge["volumes"]
    # the one writable folder of the read-only container, where the image points the
    # bridge's state ($STATE_DIRECTORY: the Sparkplug bdSeq, a buffer), kept in a volume
    assert bridge["read_only"] is True
    assert "bridge-state:/var/lib/modbus-bridge" in bridge["volumes"]
    assert "bridge-state" in compose["volumes"]
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert "STATE_DIRECTORY=/var/lib/modbus-bridge" in dockerfile
    assert "-o modbus-bridge -g modbus-bridge" in dockerfile
    assert bridge["depends_on"] == ["mosquitto"]
    # mosquitto.conf is the file compose mounts, and it listens beyond the container.
    mount = services["mosquitto"]["volumes"][0]
    assert mount.startswith("./mosquitto.conf:") and mount.endswith(":ro")
    assert "listener 1883" in (DOCKER / "mosquitto.conf").read_text()
    # The serial pass-through is there for RS485 users, commented out.
    assert "#   - /dev/serial/by-id/" in (DOCKER / "compose.yaml").read_text()
