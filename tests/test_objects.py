"""The content store on its own: atomic, verified, deduplicated; and the keep config."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path

import pytest
from lineage_core import hasher, objects
from lineage_core.errors import ConfigError, CorruptObject, NotFound
from lineage_core.models import Keep
from lineage_core.objects import ObjectStore

from lineaged.config import load_config, parse_size
from tests.helpers import b3


def _leftovers(store: ObjectStore) -> list[str]:
    return [str(p) for p in store.root.rglob(".tmp-*")]


def test_put_keeps_the_bytes_under_their_digest_once(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    data = os.urandom(3 << 20) + b"tail"
    first, second = tmp_path / "a.bin", tmp_path / "b.bin"
    first.write_bytes(data)
    second.write_bytes(data)
    digest = b3(data)
    kept = store.put(str(first), digest)
    assert kept.kept and kept.size == len(data) and kept.method in ("reflink", "copy")
    assert store.path_of(digest) == tmp_path / "objects" / digest[:2] / digest[2:]
    assert store.path_of(digest).read_bytes() == data
    again = store.put(str(second), digest)
    assert again.kept and again.method == "present"
    count, _ = store.disk_usage()
    assert count == 1
    assert b"".join(store.chunks(digest, chunk=1 << 20)) == data
    assert not _leftovers(store)


def test_a_file_that_changed_before_it_was_copied_is_not_kept(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    path = tmp_path / "data.csv"
    path.write_bytes(b"first content\n")
    digest = hasher.hash_file(path).digest
    path.write_bytes(b"second content, written before the copy\n")
    result = store.put(str(path), digest)
    assert not result.kept and "changed" in result.reason
    assert not store.path_of(digest).exists()
    assert not _leftovers(store)
    gone = store.put(str(tmp_path / "missing"), digest)
    assert not gone.kept and "gone" in gone.reason


def test_a_corrupt_object_is_refused_not_handed_out(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    path = tmp_path / "model.pkl"
    path.write_bytes(b"model bytes" * 1000)
    digest = b3(path.read_bytes())
    assert store.put(str(path), digest).kept
    target = store.path_of(digest)
    os.chmod(target, 0o600)
    damaged = bytearray(target.read_bytes())
    damaged[100] ^= 0xFF
    target.write_bytes(bytes(damaged))
    chunks = store.chunks(digest)
    with pytest.raises(CorruptObject, match="no longer holds"):
        next(chunks)
    with pytest.raises(NotFound):
        next(store.chunks(b3(b"never kept")))


def test_a_big_corrupt_object_never_gives_its_last_chunk(tmp_path: Path) -> None:
    store = ObjectStore(tmp_path / "objects")
    path = tmp_path / "big.bin"
    data = os.urandom((3 << 20) + 11)
    path.write_bytes(data)
    digest = b3(data)
    assert store.put(str(path), digest).kept
    target = store.path_of(digest)
    os.chmod(target, 0o600)
    with target.open("r+b") as f:
        f.seek(len(data) - 1)
        f.write(bytes([data[-1] ^ 0xFF]))
    received = []
    with pytest.raises(CorruptObject):
        for chunk in store.chunks(digest):
            received.append(chunk)
    assert 0 < sum(map(len, received)) < len(data)


def test_the_copy_falls_back_when_the_kernel_refuses(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No reflink and no copy_file_range (EXDEV from an old kernel): sendfile still copies."""

    def refuse(*args: object, **kwargs: object) -> int:
        raise OSError(errno.EXDEV, "cross-device")

    def no_clone(*args: object) -> int:
        raise OSError(errno.EOPNOTSUPP, "no reflinks here")

    monkeypatch.setattr(objects.os, "copy_file_range", refuse)
    monkeypatch.setattr(objects.fcntl, "ioctl", no_clone)
    monkeypatch.setattr(objects, "_PIECE", 64 << 10)  # many pieces, each hashed as it lands
    store = ObjectStore(tmp_path / "objects")
    data = os.urandom((1 << 20) + 17)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    result = store.put(str(path), b3(data))
    assert result.kept and result.method == "copy"
    assert store.path_of(b3(data)).read_bytes() == data


def test_keep_policy_and_budget_come_from_the_toml(tmp_path: Path) -> None:
    data, models = tmp_path / "data", tmp_path / "models"
    data.mkdir()
    models.mkdir()
    config = tmp_path / "lineaged.toml"
    config.write_text(
        'objects_dir = "store"\nobjects_budget = "2G"\n'
        f'[[roots]]\npath = "{data}"\nrole = "data"\nkeep = "all"\n'
        f'[[roots]]\npath = "{models}"\nrole = "model"\n'
    )
    args = argparse.Namespace(
        config=str(config), watch=[f"{data}:data"], state_dir=str(tmp_path / "state")
    )
    loaded = load_config(args)
    keeps = {Path(r.path).name: r.keep for r in loaded.roots}
    assert keeps == {"data": Keep.ALL, "models": Keep.LINEAGE}  # --watch keeps the TOML policy
    assert loaded.objects_path == tmp_path / "store"
    assert loaded.objects_budget == 2 << 30
    assert parse_size(1234) == 1234 and parse_size("1.5k") == 1536
    config.write_text(f'[[roots]]\npath = "{data}"\nkeep = "some"\n')
    with pytest.raises(ConfigError, match="keep must be"):
        load_config(argparse.Namespace(config=str(config)))
    config.write_text(f'[[roots]]\npath = "{data}"\nobjects_budget = 10\n')
    with pytest.raises(ConfigError, match="top-level keys go before"):
        load_config(argparse.Namespace(config=str(config)))
    config.write_text('objects_budget = "lots"\n')
    with pytest.raises(ConfigError, match="objects_budget"):
        load_config(argparse.Namespace(config=str(config)))


def test_hash_many_keeps_small_files_from_the_buffer_it_hashed(tmp_path: Path) -> None:
    """Worker processes keep each small file from the very bytes they hashed."""
    tree = tmp_path / "tree"
    tree.mkdir()
    paths = []
    for i in range(40):
        path = tree / f"f{i:03d}.bin"
        path.write_bytes(os.urandom(100 + i) if i % 10 else b"same bytes\n")
        paths.append(str(path))
    store = ObjectStore(tmp_path / "objects")
    store.root.mkdir()
    results = dict(
        hasher.hash_many(
            paths, workers=2, pool_min_paths=10, chunk_paths=8, keep_into=str(store.root)
        )
    )
    for path in paths:
        result = results[path]
        assert isinstance(result, hasher.HashResult)
        data = Path(path).read_bytes()
        assert result.digest == b3(data)
        assert result.kept in ("copy", "present")
        assert store.path_of(result.digest).read_bytes() == data
    assert store.disk_usage()[0] == 37  # four files share one content: kept once
    assert not _leftovers(store)


def test_keep_all_root_keeps_every_version_from_the_first_scan(tmp_path: Path) -> None:
    """An engine on a keep = "all" root: the initial scan keeps small and big files."""
    from lineage_core.models import Role, Root

    from lineaged.config import Config
    from lineaged.engine import Engine
    from lineaged.store import DB_NAME, Store
    from tests.helpers import wait_for

    data = tmp_path / "data"
    data.mkdir()
    small = {f"s{i}.csv": f"{i},{i * i}\n".encode() for i in range(5)}
    for name, content in small.items():
        (data / name).write_bytes(content)
    big = os.urandom((2 << 20) + 5)  # over the hasher's threshold: kept by a copy
    (data / "big.bin").write_bytes(big)
    state = tmp_path / "state"
    state.mkdir()
    config = Config(
        roots=(Root(str(data), Role.DATA, keep=Keep.ALL),),
        state_dir=state,
        socket=tmp_path / "s",
        settle_ms=50,
        scan_interval=0,
    )
    store = Store.open(state / DB_NAME)
    engine = Engine(config, store)
    try:
        engine.start()
        wait_for(lambda: engine.serving, what="initial scan")
        objects_store = ObjectStore(state / "objects")
        for content in [*small.values(), big]:
            assert objects_store.path_of(b3(content)).read_bytes() == content
            assert store.object_kept(b3(content))
        assert store.object_totals() == (6, sum(map(len, small.values())) + len(big))
        # A later version is kept as the watcher records it.
        (data / "s0.csv").write_bytes(b"changed\n")
        wait_for(lambda: store.object_kept(b3(b"changed\n")), what="the new version kept")
    finally:
        engine.stop()
        store.close()
