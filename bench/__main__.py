"""Run every ``bench/bench_*.py`` module's ``main()`` in turn (``make bench``).

``python -m bench [NAME ...]`` runs only the modules whose name contains one of NAMEs.
A benchmark that fails is reported and the others still run; the exit status is 1 then.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import time
import traceback

import bench


def main(argv: list[str] | None = None) -> int:
    """Import each ``bench.bench_*`` module and call its ``main()``."""
    wanted = sys.argv[1:] if argv is None else argv
    names = sorted(
        info.name
        for info in pkgutil.iter_modules(bench.__path__)
        if info.name.startswith("bench_") and (not wanted or any(w in info.name for w in wanted))
    )
    if not names:
        print(f"no benchmark matches {wanted}", file=sys.stderr)
        return 2
    failed: list[str] = []
    for name in names:
        print(f"\n=== bench.{name} ===", flush=True)
        started = time.perf_counter()
        try:
            importlib.import_module(f"bench.{name}").main()
        except Exception:
            traceback.print_exc()
            failed.append(name)
        print(f"=== bench.{name}: {time.perf_counter() - started:.1f} s ===", flush=True)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
