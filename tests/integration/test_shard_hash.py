"""A shard's hosts never move because of a Python version or a process's hash seed: the
hash is recomputed in other interpreters (child processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bridge.shard import shard_of

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
PY313 = Path.home() / ".pyenv/versions/3.13.0/bin/python3.13"
NAMES = [f"gw-{i}" for i in range(1, 21)] + ["plant-a/rs485", "Köln Süd", "x"]


def test_the_hash_is_the_same_in_other_interpreters_and_hash_seeds() -> None:
    here = {name: shard_of(name, 4) for name in NAMES}
    code = (
        "import json, sys; from bridge.shard import shard_of; "
        "print(json.dumps({n: shard_of(n, 4) for n in json.loads(sys.argv[1])}))"
    )
    pythons = [sys.executable] + ([str(PY313)] if PY313.exists() else [])
    for python in pythons:
        for seed in ("0", "12345"):
            env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(REPO)}
            out = subprocess.run(
                [python, "-c", code, json.dumps(NAMES)],
                capture_output=True,
                text=True,
                check=True,
                env=env,
                cwd=REPO,
            ).stdout
            assert json.loads(out) == here, (python, seed)
