"""Which tracer a run gets, and what its record will miss (``lineage run``'s completeness).

In ``auto`` mode, the first that sees everything wins:

1. the LD_PRELOAD interposer (``native.py``), when it builds and the command is a program it
   sees (not static, setuid, 32-bit or Go); the programs of that kind the command starts are
   handed over to strace when it can trace here;
2. ``strace -f``, when installed and allowed to trace — about 100 µs per traced call here;
3. otherwise the capture is *partial*: the audit hook for a Python command (Python's own
   opens, not those of native libraries or other programs), nothing for anything else.

Every reason a record will be partial is a sentence a person can act on; a run whose plan
has none starts out complete (runtime escapes are added by the runner).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from lineage_client.capture.native import build_interposer, escape_reason

__all__ = [
    "METHOD_AUDIT_HOOK",
    "METHOD_INTERPOSER",
    "METHOD_NONE",
    "METHOD_STRACE",
    "MODES",
    "CapturePlan",
    "escaped_reasons",
    "plan_capture",
    "untraced_programs_reason",
]

METHOD_INTERPOSER = "interposer"
METHOD_AUDIT_HOOK = "audit-hook"
METHOD_STRACE = "strace"
METHOD_NONE = "none"
MODES = ("auto", METHOD_INTERPOSER, METHOD_STRACE, METHOD_AUDIT_HOOK, METHOD_NONE)

_ESCAPES = {
    "static": "is statically linked",
    "setuid": "is setuid (the loader ignores LD_PRELOAD for it)",
    "32-bit": "is a 32-bit program",
    "go": "is a Go program (it makes its system calls without libc)",
}


class CapturePlan:
    """The tracer chosen for a command, and why its record will be partial (if it will).

    A plain class, not a dataclass: it is made on the way to starting the command, which
    imports nothing it can do without (dataclasses loads inspect).
    """

    __slots__ = ("interposer", "method", "reasons", "strace", "warnings")

    def __init__(
        self,
        method: str,
        *,
        strace: str | None = None,
        interposer: str = "",
        warnings: list[str] | None = None,
        reasons: list[str] | None = None,
    ) -> None:
        self.method = method
        self.strace = strace
        self.interposer = interposer
        self.warnings = warnings if warnings is not None else []
        self.reasons = reasons if reasons is not None else []


def plan_capture(
    mode: str,
    argv: Sequence[str],
    program: str,
    env: Mapping[str, str],
    python_launch: tuple[str, bool] | None,
) -> CapturePlan:
    """Choose the tracer for ``argv`` (``program`` is its resolved executable).

    ``python_launch`` is (interpreter, whether the audit hook loads) for a Python command.
    """
    name = os.path.basename(argv[0])
    if mode == METHOD_NONE:
        return CapturePlan(METHOD_NONE, reasons=["tracing was disabled (--capture none)"])
    if mode == METHOD_AUDIT_HOOK:
        plan = CapturePlan(METHOD_AUDIT_HOOK)
        plan.reasons.append(
            "--capture audit-hook sees only the files Python code opens itself, not those "
            "of native libraries (Arrow, Polars, HDF5, SQLite) or of other programs"
        )
        if python_launch is None or not python_launch[1]:
            plan.reasons.append(f"{name} does not load the audit hook")
        return plan
    reasons: list[str] = []
    warnings: list[str] = []
    if mode in ("auto", METHOD_INTERPOSER):
        interposer = build_interposer(env)
        escape = escape_reason(program)
        if interposer.path and not escape:
            if python_launch is not None and not python_launch[1]:
                warnings.append(
                    f"{os.path.basename(python_launch[0])} runs with -I, -E or -S, which skips "
                    "the audit hook: imported modules are recorded as reads, not as code"
                )
            return CapturePlan(METHOD_INTERPOSER, interposer=interposer.path, warnings=warnings)
        if not interposer.path:
            reasons.append(f"the LD_PRELOAD interposer is unavailable: {interposer.problem}")
        else:
            reasons.append(
                f"{name} {_ESCAPES.get(escape, escape)}: the LD_PRELOAD interposer cannot "
                "see its file accesses"
            )
        if mode == METHOD_INTERPOSER:
            return _fallback(python_launch, name, reasons, warnings)
    # (a) `lineage run` start-up: not loaded before the command is exec'd
    from lineage_client.capture.strace import find_strace, strace_problem

    strace = find_strace(env.get("PATH", os.defpath))
    if strace is None:
        reasons.append("strace is not installed (apt-get install strace)")
    else:
        problem = strace_problem(strace)
        if problem:
            reasons.append(f"strace cannot trace here (ptrace not permitted?): {problem}")
        else:
            # Complete, only slower: what made the faster tracer unusable is worth a line.
            warnings.extend(f"{reason}; tracing with strace instead" for reason in reasons)
            if python_launch is not None and not python_launch[1]:
                warnings.append(
                    f"{os.path.basename(python_launch[0])} runs with -I, -E or -S, which skips "
                    "the capture hook: tracing with strace instead"
                )
            return CapturePlan(METHOD_STRACE, strace=strace, warnings=warnings)
    return _fallback(python_launch, name, reasons, warnings)


def _fallback(
    python_launch: tuple[str, bool] | None, name: str, reasons: list[str], warnings: list[str]
) -> CapturePlan:
    if python_launch is not None and python_launch[1]:
        reasons.append(
            "only the audit hook traced the run: files opened by native libraries (Arrow, "
            "Polars, HDF5, SQLite) and by programs that are not Python were not seen"
        )
        return CapturePlan(METHOD_AUDIT_HOOK, warnings=warnings, reasons=reasons)
    reasons.append(f"no tracer could follow {name}: no file access was seen")
    return CapturePlan(METHOD_NONE, warnings=warnings, reasons=reasons)


def escaped_reasons(escaped: Mapping[str, str]) -> list[str]:
    """A reason for each program (path -> why) the interposer could not follow at run time."""
    return [
        f"{path} {_ESCAPES.get(why, why)}: the LD_PRELOAD interposer did not see its file "
        "accesses, and strace could not take over (missing, not allowed to trace, or still "
        "being checked when it started; --capture strace traces every process)"
        for path, why in sorted(escaped.items())
    ]


def untraced_programs_reason(programs: Sequence[str]) -> list[str]:
    """A reason naming the non-Python programs an audit-hook run started, if any."""
    names = sorted(
        {os.path.basename(p) for p in programs if not os.path.basename(p).startswith("python")}
    )
    if not names:
        return []
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return [
        f"the command started programs that are not Python ({shown}): the audit hook does not "
        "see the files they read or wrote"
    ]
