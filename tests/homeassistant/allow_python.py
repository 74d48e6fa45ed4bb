"""Let the Home Assistant Core of this venv start on this venv's Python.

Run with the Home Assistant venv's own interpreter (`make ha-venv` does). Home Assistant
2025.11.3 asks for Python 3.13.2 and refuses to start on 3.13.0, on which it runs
normally (measured: /work/shared/notes/pitfalls.md). This relaxes
`REQUIRED_PYTHON_VER` in the venv's installed `homeassistant/const.py` to the running
version, and changes nothing when the running Python is new enough. It never touches
anything outside that venv.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from homeassistant import const


def main() -> int:
    running = sys.version_info[:3]
    required = tuple(const.REQUIRED_PYTHON_VER)
    if running >= required:
        print(f"Home Assistant {const.__version__} runs on Python {'.'.join(map(str, running))}")
        return 0
    path = Path(const.__file__)
    text = path.read_text()
    patched, count = re.subn(
        r"^(REQUIRED_PYTHON_VER\b[^=]*=\s*)\(\d+, \d+, \d+\)",
        lambda m: f"{m.group(1)}{running!r}",
        text,
        flags=re.MULTILINE,
    )
    if count != 1:
        print(f"{path}: no REQUIRED_PYTHON_VER line to relax", file=sys.stderr)
        return 1
    path.write_text(patched)
    print(
        f"{path}: REQUIRED_PYTHON_VER {required} -> {running} (Home Assistant "
        f"{const.__version__} on this Python)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
