"""How many examples the property tests draw.

The counts in the tests keep `make test` within its time on a two-core runner. For a
deeper search (before a release, or after changing a parser), multiply them:
``BRIDGE_FUZZ_SCALE=20 make test-unit``. Hypothesis keeps every failing example it
found in ``.hypothesis/`` and tries it first on the next run, whatever the scale.
"""

from __future__ import annotations

import os

SCALE = float(os.environ.get("BRIDGE_FUZZ_SCALE", "1"))


def examples(count: int) -> int:
    """`count` examples, times BRIDGE_FUZZ_SCALE."""
    return max(1, round(count * SCALE))
