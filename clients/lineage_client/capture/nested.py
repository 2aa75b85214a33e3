"""Nested ``lineage run``s: a run's children say what they did, so the parent leaves it out.

A parent ``lineage run`` traces every process of its command, the nested ``lineage run``
wrappers and their commands included; without this, the parent would list its children's
inputs and outputs as its own (and a model made by a child would have two writers). The
parent hands its command a private folder in ``$LINEAGE_CHILD_NOTES``; each nested wrapper
writes a note there when it starts (its run id and start time) and again when it ends
(its end time and every path its run read or wrote, its own children's included). The
parent then drops each access of a path a child reported that lies within that child's
time span, and sends no reads while it runs once a child has started (they may be the
child's). The children are linked by ``parent_run_id`` (``LINEAGE_RUN_ID``) and listed by
``lineage show``.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from lineage_core.models import Access

__all__ = [
    "CHILDREN_ENV",
    "ChildNote",
    "children_dir",
    "has_children",
    "note_child",
    "read_children",
    "without_children",
    "work_tree_files",
]

CHILDREN_ENV = "LINEAGE_CHILD_NOTES"


@dataclass(frozen=True, slots=True)
class ChildNote:
    """What a nested run told its parent: its span and the paths it read or wrote."""

    run_id: str
    started_at: int
    ended_at: int | None  # None: it has not ended (or died before it could say)
    paths: frozenset[str]


def children_dir() -> str:
    """A new private folder for the notes of this run's children."""
    return tempfile.mkdtemp(prefix="lineage-children-")


def note_child(
    run_id: str, started_at: int, *, ended_at: int | None = None, paths: Iterable[str] = ()
) -> None:
    """Tell the parent run (if this wrapper has one) that this run started or ended."""
    folder = os.environ.get(CHILDREN_ENV, "")
    if not folder or not os.path.isdir(folder):
        return
    body = {
        "run_id": run_id,
        "started_at": started_at,
        "ended_at": ended_at,
        "paths": sorted(set(paths)),
    }
    final = os.path.join(folder, f"{run_id}.json")
    temporary = f"{final}.{os.getpid()}.tmp"
    with contextlib.suppress(OSError):
        with open(temporary, "w", encoding="utf-8", errors="surrogateescape") as stream:
            json.dump(body, stream)
        os.replace(temporary, final)


def work_tree_files(cwd: str) -> list[str]:
    """Every file of the git work tree around ``cwd`` (tracked and untracked, not ignored),
    absolute: what describing the code state (``git status``, ``git diff``) may read — git
    re-reads a file whose stat it cannot trust. A nested wrapper's git runs under its
    parent's tracer: these reads are the wrapper's, not the parent's."""
    try:
        top = subprocess.run(
            ["git", "-C", cwd, "rev-parse", "--show-toplevel"],
            capture_output=True, check=True, timeout=30,
        ).stdout.decode("utf-8", "surrogateescape").strip()  # fmt: skip
        listed = subprocess.run(
            ["git", "-C", top, "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True, check=True, timeout=60,
        ).stdout.decode("utf-8", "surrogateescape")  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return []
    real_top = os.path.realpath(top)
    return [os.path.join(real_top, name) for name in listed.split("\0") if name]


def has_children(folder: str) -> bool:
    """Whether a nested run has started under this one."""
    try:
        return any(name.endswith(".json") for name in os.listdir(folder))
    except OSError:
        return False


def read_children(folder: str) -> list[ChildNote]:
    """The notes of this run's children (unreadable ones left out)."""
    notes: list[ChildNote] = []
    try:
        names = sorted(n for n in os.listdir(folder) if n.endswith(".json"))
    except OSError:
        return notes
    for name in names:
        try:
            with open(os.path.join(folder, name), encoding="utf-8", errors="surrogateescape") as f:
                body = json.load(f)
            ended = body.get("ended_at")
            notes.append(
                ChildNote(
                    run_id=str(body["run_id"]),
                    started_at=int(body["started_at"]),
                    ended_at=None if ended is None else int(ended),
                    paths=frozenset(str(p) for p in body.get("paths", ())),
                )
            )
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return notes


def without_children(accesses: Sequence[Access], children: Sequence[ChildNote]) -> list[Access]:
    """``accesses`` without those of a path a child reported, made within the span of the
    children that reported it (a path the parent also used outside them stays)."""
    if not children:
        return list(accesses)
    spans: dict[str, tuple[int, int]] = {}
    for child in children:
        end = child.ended_at if child.ended_at is not None else 2**63 - 1
        for path in child.paths:
            known = spans.get(path)
            spans[path] = (
                (child.started_at, end)
                if known is None
                else (min(known[0], child.started_at), max(known[1], end))
            )
    kept: list[Access] = []
    for access in accesses:
        span = spans.get(access.path)
        if span is not None and span[0] <= access.first_at and access.last_at <= span[1]:
            continue
        kept.append(access)
    return kept
