"""``python -m lineaged``: the daemon."""

from __future__ import annotations

import sys

from lineaged.launch import main

if __name__ == "__main__":
    sys.exit(main())
