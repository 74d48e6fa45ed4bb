"""A Sparkplug B host application's view, through Eclipse Tahu's JavaScript library
(npm `sparkplug-payload`, run by `tests/tahu/decode.js` under node): an implementation
other than the bridge's encoder decodes what the bridge publishes and encodes the
commands sent to it.

Where the library lives: `$TAHU_HOME/node_modules` (by default
`~/.cache/modbus-bridge/tahu`, where `make tahu` installs it). Without node or the
library, the tests that need it are skipped with the command that installs it.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "tests" / "tahu" / "decode.js"
HOME = Path(os.environ.get("TAHU_HOME", Path.home() / ".cache" / "modbus-bridge" / "tahu"))


def require_tahu() -> None:
    if shutil.which("node") is None:
        pytest.skip("node is not installed (Node.js 18+ runs Eclipse Tahu's decoder)")
    if not (HOME / "node_modules" / "sparkplug-payload").is_dir():
        pytest.skip(f"no sparkplug-payload under {HOME}: `make tahu` installs it")


def _run(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    env = {**os.environ, "NODE_PATH": str(HOME / "node_modules")}
    text = "".join(json.dumps(line) + "\n" for line in lines)
    done = subprocess.run(
        ["node", str(SCRIPT)],
        input=text.encode(),
        capture_output=True,
        env=env,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"decode.js failed: {done.stderr.decode(errors='replace')}")
    return [json.loads(line) for line in done.stdout.decode().splitlines() if line.strip()]


def decode(messages: list[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Each (topic, payload) as Tahu reads it: topic, timestamp, seq, metrics (name,
    alias, type, value, timestamp, is_historical, is_null, properties)."""
    if not messages:
        return []
    return _run([{"topic": t, "payload": base64.b64encode(p).decode()} for t, p in messages])


def encode(metrics: list[dict[str, Any]], timestamp: int = 0) -> bytes:
    """A payload as Tahu encodes it (a host application's NCMD or DCMD)."""
    [out] = _run([{"encode": {"timestamp": timestamp, "metrics": metrics}}])
    return base64.b64decode(out["payload"])
