"""What is never a run's input: the environment, lineage itself, VCS internals, user config."""

from __future__ import annotations

import os
import site
import sys
import sysconfig
from pathlib import Path

import lineage_client
import lineage_core
import pytest
from lineage_client.capture.noise import environment_dirs, is_noise

import lineaged

HOME = "/home/ada"


@pytest.mark.parametrize(
    "path",
    [
        f"{HOME}/.gitconfig",
        f"{HOME}/.netrc",
        f"{HOME}/.config/git/config",
        f"{HOME}/.ssh/config",
        f"{HOME}/.jupyter/jupyter_notebook_config.py",
        "/srv/project/.git/HEAD",
        "/srv/project/.git/objects/ab/cdef",
        "/srv/project/sub/.hg/store/data",
        os.path.join(os.path.realpath(sysconfig.get_paths()["stdlib"]), "json", "__init__.py"),
        os.path.join(os.path.realpath(site.getsitepackages()[0]), "grpc", "__init__.py"),
        os.path.join(os.path.realpath(lineaged.__path__[0]), "store", "store.py"),
        os.path.join(os.path.realpath(lineage_core.__path__[0]), "wire.py"),
        os.path.join(os.path.realpath(lineage_client.__path__[0]), "capture", "_boot", "x.py"),
        os.path.realpath(sys.executable),
    ],
)
def test_noise(path: str) -> None:
    assert is_noise(path, home=HOME)


@pytest.mark.parametrize(
    "path",
    [
        f"{HOME}/project/data/train.csv",
        f"{HOME}/.cache/huggingface/hub/model.safetensors",  # a cache holds inputs
        f"{HOME}/.local/share/datasets/x.parquet",
        f"{HOME}/project/.github/workflows/ci.yml",  # .github is no VCS internal
        "/srv/project/.gitignore",
        "/srv/project/train.py",
        "/srv/data/.hidden.csv",
    ],
)
def test_not_noise(path: str) -> None:
    assert not is_noise(path, home=HOME)


def test_environment_dirs_are_absolute_and_never_root() -> None:
    dirs = environment_dirs()
    assert dirs and all(Path(d).is_absolute() and d != "/" for d in dirs)
    assert os.path.realpath(lineaged.__path__[0]) in dirs
