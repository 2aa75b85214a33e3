"""Load: 8 clients hammering queries while 10,000 files change under a real daemon."""

from __future__ import annotations

import os
import random
import threading
from pathlib import Path

from lineage_client import Client

from lineaged.store import DB_NAME
from tests.conftest import DaemonProcess
from tests.helpers import ground_truth, live_digests, wait_for

FILES = 10_000
CLIENTS = 8


def _hammer(
    client: Client, data: Path, stop: threading.Event, errors: list[BaseException], calls: list[int]
) -> None:
    rng = random.Random(threading.get_ident())
    done = 0
    try:
        while not stop.is_set():
            choice = rng.randrange(4)
            if choice == 0:
                client.status()
            elif choice == 1:
                client.list_runs(page_size=20)
            else:
                target = data / f"d{rng.randrange(10)}" / f"f{rng.randrange(FILES // 10)}.bin"
                try:
                    client.history(str(target), page_size=5)
                except Exception as exc:  # not seen yet is fine; anything else is a failure
                    if type(exc).__name__ != "NotFound":
                        raise
            done += 1
    except BaseException as exc:
        errors.append(exc)
    calls.append(done)


def test_queries_never_fail_while_files_change(daemon: DaemonProcess) -> None:
    data = daemon.data
    clients = [daemon.client() for _ in range(CLIENTS)]
    stop = threading.Event()
    errors: list[BaseException] = []
    calls: list[int] = []
    threads = [
        threading.Thread(target=_hammer, args=(c, data, stop, errors, calls), name=f"client-{i}")
        for i, c in enumerate(clients)
    ]
    for t in threads:
        t.start()
    try:
        for i in range(FILES):
            folder = data / f"d{i % 10}"
            folder.mkdir(exist_ok=True)
            (folder / f"f{i // 10}.bin").write_bytes(os.urandom(64) + i.to_bytes(4, "big"))
            if i % 1000 == 999:
                # rewrite a few already-written files too: modifications under load
                for j in range(0, i, 97):
                    (data / f"d{j % 10}" / f"f{j // 10}.bin").write_bytes(os.urandom(80))
        truth = ground_truth(data)
        db = daemon.state_dir / DB_NAME
        wait_for(lambda: live_digests(db) == truth, timeout=120, what="every change recorded")
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert not errors, f"{len(errors)} queries failed, first: {errors[0]!r}"
    assert len(calls) == CLIENTS and all(n > 0 for n in calls)
    log = daemon.log_text()
    assert "database is locked" not in log
    assert "Traceback" not in log
