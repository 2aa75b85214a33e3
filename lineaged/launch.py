"""The ``lineaged`` console script: checks that the daemon's extra is installed, then starts it.

``pip install lineaged`` installs the client and ``lineage_core`` only; the daemon's own
dependencies come with ``pip install 'lineaged[daemon]'``. Without them, this says so in one
line instead of a traceback from deep inside an import.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from importlib.util import find_spec

__all__ = ["DAEMON_MODULES", "main", "missing_daemon_modules"]

# The import name of each distribution of the "daemon" extra (pyproject.toml).
DAEMON_MODULES = {
    "watchdog": "watchdog",
    "sqlite_utils": "sqlite-utils",
    "grpc_health": "grpcio-health-checking",
    "grpc_reflection": "grpcio-reflection",
}


def missing_daemon_modules() -> list[str]:
    """The distributions of the daemon extra that are not installed, by their pip names."""
    return [pip for module, pip in DAEMON_MODULES.items() if find_spec(module) is None]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lineaged`` console script and of ``python -m lineaged``."""
    missing = missing_daemon_modules()
    if missing:
        print(
            f"lineaged: the daemon needs {', '.join(missing)}: pip install 'lineaged[daemon]'"
            " (the client and the lineage CLI work without it)",
            file=sys.stderr,
        )
        return 2
    # (c) optional: the daemon extra may be missing; imported once it is known to be there.
    from lineaged.daemon import main as daemon_main

    return daemon_main(argv)
