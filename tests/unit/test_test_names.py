"""The test files' names are unique across the tiers.

The test folders are not packages, so pytest imports each test file by its base name:
two files named alike (`tests/unit/test_x.py` and `tests/integration/test_x.py`) pass
when each tier runs alone and fail to collect in the whole run (`make test`), which
is the one CI runs.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

TESTS = Path(__file__).parent.parent


def test_no_two_test_files_share_a_name() -> None:
    seen: defaultdict[str, list[str]] = defaultdict(list)
    for path in TESTS.rglob("*.py"):
        if ".venv" not in path.parts and "node_modules" not in path.parts:
            seen[path.name].append(str(path.relative_to(TESTS)))
    shared = {
        name: paths
        for name, paths in seen.items()
        if len(paths) > 1 and name not in ("conftest.py", "__init__.py")
    }
    assert not shared, f"rename one of each: {shared}"
