"""Hostile users who can write into a watched root (issue 13, failures 1-3).

1. A directory swapped for a symlink to a tree outside the root while it is scanned or
   hashed: nothing from outside may ever reach the store (names, digests). The race is
   forced deterministically with the test seams between check and use, then stressed with
   a loop that swaps directories and links while real scans run.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lineage_core import hasher
from lineage_core.models import ChangeKind

from lineaged.watching import scanner
from tests.helpers import EngineHarness, all_digests, b3, live_digests, wait_for

CANARY_NAMES = ("canary-shadow", "canary-gshadow", "passwd")


def _artifact_paths(db: Path) -> set[str]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30) as conn:
        rows = conn.execute("SELECT path FROM artifacts").fetchall()
    conn.close()
    return {path for (path,) in rows}


@pytest.fixture
def canary(tmp_path: Path) -> tuple[Path, set[str]]:
    """A tree outside every root, standing in for /etc; returns it and its digests."""
    base = tmp_path / "canary"
    (base / "sub").mkdir(parents=True)
    digests = set()
    for name in CANARY_NAMES:
        for folder in (base, base / "sub"):
            data = f"canary {folder.name}/{name} {os.urandom(8).hex()}\n".encode()
            (folder / name).write_bytes(data)
            digests.add(b3(data))
    return base, digests


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[EngineHarness]:
    h = EngineHarness(tmp_path)
    (h.data / "q" / "s1" / "deep").mkdir(parents=True)
    (h.data / "q" / "s1" / "a.csv").write_bytes(b"inside s1\n")
    (h.data / "q" / "s1" / "deep" / "b.csv").write_bytes(b"inside s1/deep\n")
    (h.data / "q" / "s2").mkdir()
    (h.data / "q" / "s2" / "c.csv").write_bytes(b"inside s2\n")
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _assert_no_canary(h: EngineHarness, digests: set[str]) -> None:
    h.engine.wait_idle()
    leaked = all_digests(h.db) & digests
    assert not leaked, f"canary digests reached the store: {leaked}"
    names = {p for p in _artifact_paths(h.db) if os.path.basename(p).startswith("canary-")}
    assert not names, f"canary paths reached the store: {names}"


def _swap_for_link(directory: Path, target: Path) -> None:
    """What the attacker does: move the directory away, put a link in its place."""
    directory.rename(directory.with_name(directory.name + ".away"))
    directory.symlink_to(target, target_is_directory=True)


def test_directory_swapped_for_a_link_between_listing_and_opening_is_not_followed(
    harness: EngineHarness, canary: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, digests = canary
    s1 = harness.data / "q" / "s1"
    swapped: list[str] = []

    def swap_once(path: str) -> None:
        if path == str(s1) and not swapped:
            _swap_for_link(s1, base)
            swapped.append(path)

    # Only the seam between "the listing says it is a directory" and "open it" is patched.
    monkeypatch.setattr(scanner, "_before_open_hook", swap_once)
    root = harness.engine.roots.roots[0]
    stats = harness.engine.scanner.scan(root)
    assert swapped == [str(s1)], "the race was not forced"
    assert str(s1) not in stats.unreadable
    monkeypatch.setattr(scanner, "_before_open_hook", None)
    _assert_no_canary(harness, digests)
    # What was below the directory left the root: recorded as gone, not kept as live.
    live = live_digests(harness.db)
    assert str(s1 / "a.csv") not in live
    assert live[str(harness.data / "q" / "s2" / "c.csv")] == b3(b"inside s2\n")


def test_directory_swapped_for_a_link_before_its_file_is_hashed_is_not_followed(
    harness: EngineHarness, canary: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, digests = canary
    s1 = harness.data / "q" / "s1"
    harness.engine.wait_idle()
    # A new file the scan will have to hash: the walk sees it inside s1, then s1 becomes a
    # link to a tree that holds a file of the same name.
    (s1 / "passwd").write_bytes(b"the user's own file\n")
    swapped: list[str] = []

    def swap_once(path: str) -> None:
        if path == str(s1 / "passwd") and not swapped:
            _swap_for_link(s1, base)
            swapped.append(path)

    monkeypatch.setattr(hasher, "_before_open_hook", swap_once)
    root = harness.engine.roots.roots[0]
    harness.engine.scanner.scan(root)
    assert swapped, "the race was not forced"
    monkeypatch.setattr(hasher, "_before_open_hook", None)
    leaked = all_digests(harness.db) & digests
    assert not leaked, f"canary digests reached the store: {leaked}"


def test_indexer_does_not_follow_a_directory_swapped_before_the_hash(
    harness: EngineHarness, canary: tuple[Path, set[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, digests = canary
    s1 = harness.data / "q" / "s1"
    harness.engine.wait_idle()
    target = s1 / "passwd"
    target.write_bytes(b"mine\n")
    swapped: list[str] = []

    def swap_once(path: str) -> None:
        if path == str(target) and not swapped:
            _swap_for_link(s1, base)
            swapped.append(path)

    monkeypatch.setattr(hasher, "_before_open_hook", swap_once)
    harness.engine.indexer.observe({str(target): ChangeKind.MODIFIED}, wait=True)
    assert swapped, "the race was not forced"
    monkeypatch.setattr(hasher, "_before_open_hook", None)
    _assert_no_canary(harness, digests)


def test_stress_swapping_directories_and_links_during_scans_never_leaks(
    harness: EngineHarness, canary: tuple[Path, set[str]]
) -> None:
    """A swapper flips q/sN between a real directory and a link to the canary tree as fast
    as it can while reconcile scans (and the watcher's directory scans) run."""
    base, digests = canary
    q = harness.data / "q"
    for n in range(3, 8):
        sub = q / f"s{n}"
        sub.mkdir()
        for name in ("own-a", "passwd"):
            (sub / name).write_bytes(f"own {n} {name}\n".encode())
    harness.engine.wait_idle()
    stop = threading.Event()
    swaps = [0]

    def swapper() -> None:
        while not stop.is_set():
            for n in range(1, 8):
                real, away = q / f"s{n}", q / f"s{n}.away"
                try:
                    if real.is_symlink():
                        real.unlink()
                        away.rename(real)
                    else:
                        real.rename(away)
                        real.symlink_to(base / "sub" if n % 2 else base, target_is_directory=True)
                    swaps[0] += 1
                except FileNotFoundError:
                    continue

    thread = threading.Thread(target=swapper, name="swapper")
    thread.start()
    root = harness.engine.roots.roots[0]
    scans = 0
    deadline = time.monotonic() + 120
    try:
        # Bounded: enough scans and swaps to have raced many times (the unfixed scanner
        # leaked within the first few), or the deadline, whichever comes first.
        while (scans < 100 or swaps[0] < 500) and time.monotonic() < deadline:
            harness.engine.scanner.scan(root)
            harness.engine.scanner.scan(root, str(q))
            scans += 2
            _assert_no_canary(harness, digests)
    finally:
        stop.set()
        thread.join()
    assert scans >= 100 and swaps[0] >= 500, f"{scans} scans, {swaps[0]} swaps before the deadline"
    _assert_no_canary(harness, digests)
    # And the store still agrees with the tree once the swapping stops.
    for n in range(1, 8):
        real, away = q / f"s{n}", q / f"s{n}.away"
        if real.is_symlink():
            real.unlink()
            away.rename(real)
    harness.engine.scanner.scan(root)
    wait_for(
        lambda: live_digests(harness.db).get(str(q / "s3" / "own-a")) == b3(b"own 3 own-a\n"),
        what="s3/own-a recorded once it is a real directory again",
    )
    _assert_no_canary(harness, digests)


def test_walk_with_few_descriptors_reopens_through_ancestors_and_leaks_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A tree wider and deeper than the descriptor bound (lowered to 3 here) is walked
    completely: closed ancestors are opened again through theirs, and none is left open."""
    h = EngineHarness(tmp_path)
    expected = {}
    level = [h.data]
    for depth in range(6):
        below = []
        for folder in level:
            for branch in ("a", "b"):
                child = folder / f"{branch}{depth}"
                child.mkdir()
                data = f"{child.relative_to(h.data)}\n".encode()
                (child / "f.csv").write_bytes(data)
                expected[str(child / "f.csv")] = b3(data)
                below.append(child)
        level = below
    monkeypatch.setattr(scanner, "MAX_OPEN_DIRS", 3)
    open_before = len(os.listdir("/proc/self/fd"))
    h.start()
    try:
        assert live_digests(h.db) == expected
        root = h.engine.roots.roots[0]
        stats = h.engine.scanner.scan(root)
        assert stats.files == len(expected) and not stats.unreadable
        assert stats.max_depth == 6
    finally:
        h.stop()
    assert len(os.listdir("/proc/self/fd")) <= open_before
