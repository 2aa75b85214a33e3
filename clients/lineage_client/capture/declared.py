"""Code and environment of a run declared from Python (``client.run()``), as ``lineage run``
records them: the git state of the working directory, the interpreter's environment
fingerprint, and the source files the process loaded (its script and the project modules
it imported, not the standard library, site-packages or lineage's own files)."""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

from lineage_core.models import Access, AccessHow, AccessMode, AccessRole, CodeState, EnvState

from lineage_client.capture.digest import hash_external
from lineage_client.capture.environment import DEFAULT_ALLOWLIST, env_state
from lineage_client.capture.git import git_state
from lineage_client.capture.noise import noise_filter
from lineage_client.runcmd import DIFF_CAP_ENV, ENV_ALLOW_ENV, _diff_cap

__all__ = ["describe_code", "describe_env", "loaded_sources", "source_accesses"]


def describe_code(cwd: str, warnings: list[str]) -> CodeState | None:
    """The git state of ``cwd`` (None outside a work tree), with ``lineage run``'s diff cap."""
    try:
        code = git_state(cwd, diff_cap=_diff_cap())
    except OSError as exc:
        warnings.append(f"could not read the git state of {cwd}: {exc}")
        return None
    if code is not None and code.diff_truncated:
        warnings.append(
            f"the git diff is {code.diff_size} bytes; only the first {len(code.diff)} were "
            f"stored (raise {DIFF_CAP_ENV})"
        )
    return code


def describe_env() -> EnvState:
    """This interpreter's environment, with ``lineage run``'s variable allowlist."""
    extra = [p.strip() for p in os.environ.get(ENV_ALLOW_ENV, "").split(",") if p.strip()]
    return env_state((*DEFAULT_ALLOWLIST, *extra))


def loaded_sources(extra_excluded: Sequence[str] = ()) -> list[str]:
    """The process's script and the project modules it imported, resolved, sorted."""
    noise = noise_filter(extra=extra_excluded)
    found: set[str] = set()
    main = sys.modules.get("__main__")
    candidates = [getattr(main, "__file__", None), sys.argv[0] if sys.argv else None]
    for module in list(sys.modules.values()):
        namespace = getattr(module, "__dict__", None)
        file = namespace.get("__file__") if isinstance(namespace, dict) else None
        candidates.append(file)
    for file in candidates:
        if not isinstance(file, str) or not file or file.startswith("<"):
            continue
        if file.endswith((".pyc", ".pyo")) or "/__pycache__/" in file:
            continue
        path = os.path.realpath(file)
        if noise(path) or not os.path.isfile(path):
            continue
        found.add(path)
    return sorted(found)


def source_accesses(paths: Sequence[str], first_at: int, last_at: int) -> list[Access]:
    """Code reads of ``paths``, hashed here (as ``lineage run`` sends its source files)."""
    hashed = [
        hash_external(
            Access(
                path=path,
                mode=AccessMode.READ,
                first_at=first_at,
                last_at=last_at,
                how=AccessHow.TRACED,
                role=AccessRole.CODE,
            )
        )
        for path in paths
    ]
    return [access for access in hashed if access.digest]  # gone or unreadable: no claim
