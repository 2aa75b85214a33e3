"""Issue 13, failure 4: secrets in argv, git remotes and variables are never stored."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from lineage_core import wire
from lineage_core._proto.lineage.v1 import lineage_pb2 as pb
from lineage_core._proto.lineage.v1 import lineage_pb2_grpc as pb_grpc
from lineage_core.errors import ConfigError
from lineage_core.models import CodeState, EnvState, RunStart
from lineage_core.redact import KEY_FILE, REDACTED, Redactor, load_or_create_key, secret_name

from lineaged.config import load_config
from lineaged.daemon import build_parser
from lineaged.store import DB_NAME
from tests.conftest import DaemonProcess

SECRETS = {
    "argv_eq": "hunter2-argv-eq",
    "argv_next": "tok-argv-next-77",
    "query": "glsecret-query-1234",
    "userinfo": "remote-pass-5678",
    "mysql": "mysql-pwd-9999",
    "db": "db-pass-4242",
    "proxy": "proxy-pass-3131",
    "jwt": "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJjaSJ9.c2lnbmF0dXJl",
    "token_var": "gitlab-token-value-1",
    "param": "param-secret-8080",
}


def _store_bytes(state_dir: Path) -> bytes:
    """Every byte the store holds on disk (database, WAL)."""
    return b"".join(
        p.read_bytes() for p in state_dir.iterdir() if p.name.startswith(DB_NAME) and p.is_file()
    )


# -- the rules -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["x", "--password=hunter2"], ["x", "--password=<redacted>"]),
        (["x", "--token", "X", "--epochs", "3"], ["x", "--token", "<redacted>", "--epochs", "3"]),
        (
            ["x", "--api-key", "k", "--apiKey=k"],
            ["x", "--api-key", "<redacted>", "--apiKey=<redacted>"],
        ),
        (["x", "--token-file", "/run/tok"], ["x", "--token-file", "/run/tok"]),  # where, not what
        (["x", "--token", "--verbose"], ["x", "--token", "--verbose"]),  # no value given
        (["x", "--no-password", "data.csv"], ["x", "--no-password", "data.csv"]),
        (["mysql", "-phunter2", "-p"], ["mysql", "-p<redacted>", "-p"]),
        (["ssh", "-p", "2222"], ["ssh", "-p", "2222"]),  # -p is a port here
        (["curl", "-u", "me:pw", "http://h"], ["curl", "-u", "me:<redacted>", "http://h"]),
        (["x", "PGPASSWORD=pw", "LR=0.1"], ["x", "PGPASSWORD=<redacted>", "LR=0.1"]),
        (
            ["x", "https://h/p?private_token=t&ref=main&sig=s"],
            ["x", "https://h/p?private_token=<redacted>&ref=main&sig=<redacted>"],
        ),
        (["x", "postgres://app:pw@db/x"], ["x", "postgres://app:<redacted>@db/x"]),
        (["x", "https://ghp_abc@github.com/o/r"], ["x", "https://<redacted>@github.com/o/r"]),
        (
            ["curl", "-H", "Authorization: Bearer abcdefgh12"],
            ["curl", "-H", "Authorization: <redacted>"],
        ),
        (["x", "--hf", "hf_" + "a" * 34], ["x", "--hf", "<redacted>"]),
        (["x", "--key-id", "k1", "--keep", "3"], ["x", "--key-id", "k1", "--keep", "3"]),
        (["x", "--sort-key", "ts", "--label_key=y"], ["x", "--sort-key", "ts", "--label_key=y"]),
        (
            ["x", "--ssh-key", "k", "--api_key=k"],
            ["x", "--ssh-key", "<redacted>", "--api_key=<redacted>"],
        ),
        (["x", "/m/sk-learn-pipeline-version-2.pkl"], ["x", "/m/sk-learn-pipeline-version-2.pkl"]),
        (["x", "--desc=Basic trainingloop"], ["x", "--desc=Basic trainingloop"]),
        (["x", "--note", "a=b&c=d"], ["x", "--note", "a=b&c=d"]),
    ],
)
def test_client_rules_redact_argv(argv: list[str], expected: list[str]) -> None:
    assert list(Redactor().argv(argv)) == expected


def test_names_and_variables() -> None:
    for name in ("--password", "private_token", "access_token", "key", "sig", "X-Auth-Token"):
        assert secret_name(name), name
    for name in ("--epochs", "--keep", "--monkey-patch", "--token-file", "--key-id", "ref"):
        assert not secret_name(name), name
    redactor = Redactor()
    kept = redactor.variables(
        {
            "MYSQL_PWD": "x",
            "CI_JOB_JWT": "y",
            "GITLAB_TOKEN": "z",
            "PWD": "/home/u",
            "DATABASE_URL": "postgres://u:pw@h/db",
            "HTTPS_PROXY": "http://u:pp@proxy:3128",
        },
        drop_secret=True,
    )
    assert kept == {
        "PWD": "/home/u",
        "DATABASE_URL": "postgres://u:<redacted>@h/db",
        "HTTPS_PROXY": "http://u:<redacted>@proxy:3128",
    }


def test_keyed_markers_compare_equal_without_revealing(tmp_path: Path) -> None:
    key = load_or_create_key(tmp_path)
    assert os.stat(tmp_path / KEY_FILE).st_mode & 0o777 == 0o600
    assert load_or_create_key(tmp_path) == key  # made once, kept
    redactor = Redactor(key=key)
    one, two = redactor.argv(["x", "--password=a", "--password=a"])[1:]
    assert one == two != redactor.argv(["x", "--password=b"])[1]
    assert "<redacted:" in one
    # Another store's key gives another marker: no marker is a dictionary oracle without it.
    other = Redactor(key=b"\x01" * 32).argv(["x", "--password=a"])[1]
    assert other != one
    # Redacting twice changes nothing (a client's marker is kept as it came).
    assert redactor.argv(redactor.argv(["x", "--token", "t"])) == redactor.argv(
        ["x", "--token", "t"]
    )
    assert redactor.argv(["x", f"--token={REDACTED}"])[1] == f"--token={REDACTED}"


def test_extra_names_and_values_from_the_config(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text(
        '[redact]\nnames = ["*_dsn", "wandb_*"]\nvalues = ["corp-[0-9]{6}"]\n', encoding="utf-8"
    )
    args = build_parser().parse_args(["--config", str(config), "--watch", str(tmp_path)])
    loaded = load_config(args)
    redactor = Redactor(names=loaded.redact_names, values=loaded.redact_values)
    assert redactor.argv(["x", "--sentry-dsn", "d", "note=corp-123456"]) == (
        "x",
        "--sentry-dsn",
        "<redacted>",
        "note=<redacted>",
    )
    assert redactor.variables({"WANDB_MODE": "online"}, drop_secret=True) == {}
    config.write_text('[redact]\nvalues = ["("]\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="not a regular expression"):
        load_config(args)


# -- end to end: a real daemon ----------------------------------------------------------


def _git(cwd: Path, *args: str) -> None:
    subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True)


def test_lineage_run_stores_no_secret(daemon: DaemonProcess, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    _git(work, "init", "-q")
    _git(
        work,
        "remote",
        "add",
        "origin",
        f"https://gitlab.example/g/p.git?private_token={SECRETS['query']}",
    )
    env = {
        **os.environ,
        "LINEAGE_ENV_ALLOW": "*",
        "MYSQL_PWD": SECRETS["mysql"],
        "DATABASE_URL": f"postgres://app:{SECRETS['db']}@db:5432/x",
        "HTTPS_PROXY": f"http://me:{SECRETS['proxy']}@proxy:3128",
        "CI_JOB_JWT": SECRETS["jwt"],
        "DEPLOY_TOKEN": SECRETS["token_var"],
    }
    done = daemon.run_cli(
        "run",
        "--param",
        f"api_key={SECRETS['param']}",
        "--",
        sys.executable,
        "-c",
        "pass",
        f"--password={SECRETS['argv_eq']}",
        "--token",
        SECRETS["argv_next"],
        f"https://u:{SECRETS['userinfo']}@h/x",
        cwd=work,
        env=env,
    )
    assert done.returncode == 0, done.stderr
    shown = daemon.run_cli("runs", "--json", cwd=work)
    assert shown.returncode == 0, shown.stderr
    assert "--password=<redacted>" in shown.stdout
    run_id = daemon.client().list_runs(page_size=1).items[0].run_id
    run = daemon.client().get_run(run_id)
    assert run.code is not None
    assert run.code.remote == "https://gitlab.example/g/p.git?private_token=<redacted>"
    assert run.env is not None
    assert run.env.variables["DATABASE_URL"] == "postgres://app:<redacted>@db:5432/x"
    assert "MYSQL_PWD" not in run.env.variables and "CI_JOB_JWT" not in run.env.variables
    assert run.params["api_key"] == "<redacted>"
    for label, secret in SECRETS.items():
        assert secret not in repr(run), label
        assert secret.encode() not in _store_bytes(daemon.state_dir), label


def test_the_daemon_redacts_what_a_client_did_not(daemon: DaemonProcess) -> None:
    """A client that sends secrets (an old client, another language): the daemon keeps a
    keyed marker, equal for equal values, and never the value."""
    start = RunStart(
        name="raw",
        argv=("train", f"--password={SECRETS['argv_eq']}", "--token", SECRETS["argv_next"]),
        params={"db_password": SECRETS["param"]},
        code=CodeState(remote=f"https://x/r.git?access_token={SECRETS['query']}"),
        env=EnvState(
            variables={
                "MYSQL_PWD": SECRETS["mysql"],
                "HTTPS_PROXY": f"http://me:{SECRETS['proxy']}@proxy:3128",
                "CI_JOB_JWT": SECRETS["jwt"],
            }
        ),
    )
    request = wire.begin_run_to_pb(start)
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        stub = pb_grpc.LineageServiceStub(channel)
        first = stub.BeginRun(request, timeout=30).run
        second = stub.BeginRun(request, timeout=30).run
        stub.EndRun(
            pb.EndRunRequest(
                run_id=first.run_id,
                status=pb.RUN_STATUS_SUCCEEDED,
                warnings=[f"fetched https://h/x?token={SECRETS['query']}"],
            ),
            timeout=30,
        )
    runs = [daemon.client().get_run(r.run_id) for r in (first, second)]
    for run in runs:
        assert run.argv[1].startswith("--password=<redacted:")
        assert run.argv[3].startswith("<redacted:")
        assert run.env is not None
        assert run.env.variables["MYSQL_PWD"].startswith("<redacted:")
        assert run.env.variables["HTTPS_PROXY"].startswith("http://me:<redacted:")
    # Equal secrets, equal markers: "did these runs use the same password?" has an answer.
    assert runs[0].argv == runs[1].argv
    key = (daemon.state_dir / KEY_FILE).read_bytes()
    assert runs[0].argv[1] == "--password=" + Redactor(key=key).mark(SECRETS["argv_eq"])
    assert (daemon.state_dir / KEY_FILE).stat().st_mode & 0o077 == 0
    for label, secret in SECRETS.items():
        assert secret not in repr(runs), label
        assert secret.encode() not in _store_bytes(daemon.state_dir), label
    with sqlite3.connect(f"file:{daemon.state_dir / DB_NAME}?mode=ro", uri=True) as conn:
        warnings = conn.execute("SELECT warnings FROM runs WHERE run_id=?", (first.run_id,))
        assert "token=<redacted:" in warnings.fetchone()[0]
    conn.close()


def test_secrets_stored_before_are_scrubbed_by_the_migration(tmp_path: Path) -> None:
    """A store that already holds secrets (written before redaction existed) is cleaned when
    it is opened by this lineaged: the values are gone from the file, the runs stay."""
    from lineaged.store import MIGRATIONS, Store, _migration_redact_secrets

    db = tmp_path / DB_NAME
    store = Store.open(db)
    start = RunStart(
        name="old",
        argv=("train", f"--password={SECRETS['argv_eq']}", "--token", SECRETS["argv_next"]),
        params={"api_key": SECRETS["param"], "lr": "0.1"},
        code=CodeState(remote=f"https://h/r.git?private_token={SECRETS['query']}"),
        env=EnvState(variables={"MYSQL_PWD": SECRETS["mysql"], "LANG": "C"}),
    )
    store.begin()
    run_id = store.begin_run(start)  # the store itself, as an old daemon wrote it
    store.commit()
    store.close()
    assert SECRETS["argv_eq"].encode() in db.read_bytes()
    with sqlite3.connect(db) as conn:
        # As the schema before this migration (later ones, if any, then run again too).
        before = MIGRATIONS.index(_migration_redact_secrets)
        assert before == len(MIGRATIONS) - 1, "the scrub is no longer the last migration"
        conn.execute(f"PRAGMA user_version={before}")
    conn.close()
    store = Store.open(db)
    try:
        run = store.get_run(run_id)
    finally:
        store.close()
    assert run.argv == ("train", "--password=<redacted>", "--token", "<redacted>")
    assert run.params == {"api_key": "<redacted>", "lr": "0.1"}
    assert run.code is not None and run.code.remote.endswith("private_token=<redacted>")
    assert run.env is not None and run.env.variables == {"MYSQL_PWD": "<redacted>", "LANG": "C"}
    data = b"".join(p.read_bytes() for p in tmp_path.iterdir() if p.name.startswith(DB_NAME))
    for label, secret in SECRETS.items():
        assert secret.encode() not in data, label
