"""Full-jitter exponential backoff, shared by the Modbus and MQTT reconnect loops.

Full jitter (a uniform draw up to the exponential ceiling) keeps hosts spread out
even after a long outage, where a capped-then-jittered scheme would retry every
host at the same moment.
"""

from __future__ import annotations

import random

BACKOFF_MIN = 0.5
BACKOFF_MAX = 60.0


def full_jitter(failures: int, *, low: float = BACKOFF_MIN, high: float = BACKOFF_MAX) -> float:
    """Seconds to wait after `failures` in a row: uniform in [low, low * 2^(n-1)], capped."""
    ceiling = min(high, low * (2 ** min(max(0, failures - 1), 32)))
    return random.uniform(low, max(low, ceiling))
