"""env_state: interpreter facts, distributions and their digest, and the variable allowlist."""

from __future__ import annotations

import os
import platform
import stat
import sys
from importlib import metadata
from pathlib import Path

from blake3 import blake3
from lineage_client.capture.environment import DEFAULT_ALLOWLIST, env_state, looks_secret

SECRET_NAMES = (
    "API_TOKEN",
    "AWS_SECRET_ACCESS_KEY",
    "WANDB_API_KEY",
    "DB_PASSWORD",
    "FTP_PASSWD",
    "GOOGLE_APPLICATION_CREDENTIALS",
    "HTTP_AUTH",
    "SSH_PRIVATE_FILE",
    "flask_session_dir",
    "cookie_jar",
    "CUDA_SECRET_THING",
)
SECRETS = {name: f"value-that-must-not-leak-{index}" for index, name in enumerate(SECRET_NAMES)}


def test_secrets_are_never_recorded_even_when_allowlisted() -> None:
    environ = {**SECRETS, "CUDA_VISIBLE_DEVICES": "0,1", "OMP_NUM_THREADS": "4", "HOME": "/root"}
    state = env_state(("*",), environ=environ)
    assert dict(state.variables) == {
        "CUDA_VISIBLE_DEVICES": "0,1",
        "HOME": "/root",
        "OMP_NUM_THREADS": "4",
    }
    recorded = repr(state)
    for value in SECRETS.values():
        assert value not in recorded
    # Named one by one, still refused.
    assert env_state(tuple(SECRETS), environ=environ).variables == {}


def test_allowlist_patterns_and_default() -> None:
    environ = {
        "CUDA_VISIBLE_DEVICES": "3",
        "CUDA_LAUNCH_BLOCKING": "1",
        "NCCL_DEBUG": "INFO",
        "PATH": "/usr/bin",
        "HOME": "/root",
    }
    assert dict(env_state(("CUDA_*",), environ=environ).variables) == {
        "CUDA_LAUNCH_BLOCKING": "1",
        "CUDA_VISIBLE_DEVICES": "3",
    }
    default = env_state(environ=environ).variables
    assert dict(default) == {
        "CUDA_LAUNCH_BLOCKING": "1",
        "CUDA_VISIBLE_DEVICES": "3",
        "NCCL_DEBUG": "INFO",
    }
    assert "PYTHONHASHSEED" in DEFAULT_ALLOWLIST
    assert not any(looks_secret(pattern) for pattern in DEFAULT_ALLOWLIST)


def test_interpreter_and_distributions() -> None:
    state = env_state(environ={})
    assert state.python_version == platform.python_version()
    assert state.implementation == platform.python_implementation()
    assert state.platform == platform.platform()
    assert f"blake3=={metadata.version('blake3')}" in state.packages
    assert list(state.packages) == sorted(state.packages, key=str.lower)
    assert len({p.split("==")[0].lower() for p in state.packages}) == len(state.packages)
    assert state.packages_digest == blake3("\n".join(state.packages).encode()).hexdigest()


def test_another_interpreter_is_asked_in_a_subprocess(tmp_path: Path) -> None:
    # A wrapper script is not the same file as sys.executable, so it must be run to be known.
    wrapper = tmp_path / "python-wrapper"
    wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    here = env_state(environ={})
    there = env_state(python=str(wrapper), environ=dict(os.environ))
    assert there.python_version == here.python_version
    assert there.packages == here.packages
    assert there.packages_digest == here.packages_digest
