"""The real Home Assistant test runs only when asked: `make ha-test`, or
`BRIDGE_HA_PYTHON=/path/to/ha-venv/bin/python pytest tests/homeassistant`.

It is slow (Home Assistant takes 10-20 s to start) and needs Home Assistant Core in a
Python 3.13 virtual environment of its own (`make ha-venv`), one of the releases it was
tried with: 2025.4.4 (the newest that installs on Python 3.13.0 as it is) and 2025.11.3
(which asks for 3.13.2 and runs on 3.13.0 once patched: `make ha-venv HA_VERSION=2025.11.3`).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from broker import free_port
from harness import HomeAssistantCore

HA_VERSIONS = ("2025.4.4", "2025.11.3")  # the releases this test was tried with


@dataclass(frozen=True)
class Release:
    python: str  # the interpreter of Home Assistant's venv
    version: str  # Home Assistant Core's version there


@pytest.fixture(scope="session")
def ha_release() -> Release:
    python = os.environ.get("BRIDGE_HA_PYTHON")
    if not python:
        pytest.skip("set BRIDGE_HA_PYTHON to a Python with homeassistant installed (make ha-test)")
    try:
        version = subprocess.run(
            [python, "-c", "import homeassistant.const as c; print(c.__version__)"],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        pytest.fail(f"BRIDGE_HA_PYTHON={python}: no usable homeassistant ({exc})")
    if version not in HA_VERSIONS:
        pytest.fail(
            f"BRIDGE_HA_PYTHON has Home Assistant {version}; this test was tried with "
            f"{', '.join(HA_VERSIONS)}"
        )
    return Release(python, version)


@pytest.fixture(scope="session")
def ha_python(ha_release: Release) -> str:
    return ha_release.python


@pytest.fixture
async def home_assistant(
    ha_python: str, tmp_path: Path
) -> AsyncIterator[Callable[..., Awaitable[HomeAssistantCore]]]:
    started: list[HomeAssistantCore] = []

    async def start(broker_port: int, extra: str = "") -> HomeAssistantCore:
        ha = HomeAssistantCore(
            ha_python, tmp_path / "ha", http_port=free_port(), broker_port=broker_port, extra=extra
        )
        ha.start()
        started.append(ha)
        await ha.wait_http()
        await ha.onboard()
        return ha

    yield start
    for ha in started:
        await ha.stop()
