"""`python -m bridge ...` is the same as `modbus-bridge ...`."""

import sys

from bridge.cli import main

sys.exit(main())
