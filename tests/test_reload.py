"""SIGHUP rereads the configuration: roots added are watched and scanned, roots removed stop
being watched, and the history of both is kept."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lineaged.store import DB_NAME
from tests.conftest import health_status, short_tmp_dir
from tests.helpers import b3, live_digests, wait_for


def write_config(path: Path, roots: dict[str, str]) -> None:
    body = "settle_ms = 50\nscan_interval = 0\n"
    for root, role in roots.items():
        body += f'\n[[roots]]\npath = "{root}"\nrole = "{role}"\n'
    path.write_text(body)


@pytest.fixture
def base() -> Iterator[Path]:
    path = short_tmp_dir()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_sighup_adds_and_removes_roots_without_losing_history(base: Path) -> None:
    first, second = base / "first", base / "second"
    first.mkdir()
    second.mkdir()
    (first / "a.csv").write_bytes(b"first root\n")
    (second / "b.csv").write_bytes(b"second root\n")
    config = base / "lineaged.toml"
    write_config(config, {str(first): "data"})
    socket = base / "run" / "s"
    state = base / "state"
    log = (base / "log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "lineaged",
            "--config",
            str(config),
            "--state-dir",
            str(state),
            "--socket",
            str(socket),
        ],
        stdout=log,
        stderr=log,
    )
    try:
        db = state / DB_NAME
        wait_for(lambda: socket.exists() and health_status(socket) == 1, what="SERVING")
        wait_for(lambda: live_digests(db).get(str(first / "a.csv")) == b3(b"first root\n"))
        assert str(second / "b.csv") not in live_digests(db)

        write_config(config, {str(second): "model"})
        proc.send_signal(signal.SIGHUP)
        # The added root is scanned at once and watched from now on.
        wait_for(lambda: live_digests(db).get(str(second / "b.csv")) == b3(b"second root\n"))
        (second / "c.csv").write_bytes(b"written after the reload\n")
        wait_for(
            lambda: live_digests(db).get(str(second / "c.csv")) == b3(b"written after the reload\n")
        )
        # The removed root is no longer watched, but what was recorded stays.
        (first / "a.csv").write_bytes(b"changed after the root was removed\n")
        (second / "d.csv").write_bytes(b"a marker written after the change above\n")
        wait_for(lambda: str(second / "d.csv") in live_digests(db))
        assert live_digests(db)[str(first / "a.csv")] == b3(b"first root\n")

        status = subprocess.run(
            [
                sys.executable,
                "-m",
                "lineage_client.cli",
                "--socket",
                str(socket),
                "status",
                "--json",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        assert '"' + str(second) + '"' in status.stdout
        assert '"' + str(first) + '"' not in status.stdout
        assert proc.poll() is None

        bad = base / "bad.toml"
        bad.write_text("roots = 'not a list'\n[[\n")
        config.write_text(bad.read_text())
        proc.send_signal(signal.SIGHUP)  # a broken config is refused; the daemon keeps going
        wait_for(lambda: "reload refused" in (base / "log").read_text(), what="reload refused")
        assert proc.poll() is None
        assert health_status(socket) == 1
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        log.close()
    assert code == 0, (base / "log").read_text()
