"""The environment fingerprint of a run: interpreter, platform, distributions, chosen variables.

Variables are recorded only when their name matches the allowlist, and never when the name
looks like it holds a secret, whatever the allowlist says.
"""

from __future__ import annotations

import fnmatch
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import blake3
from lineage_core.models import EnvState
from lineage_core.redact import SECRET_VARIABLE_MARKERS, Redactor, secret_variable

from lineage_client.capture import _envprobe

__all__ = ["DEFAULT_ALLOWLIST", "SECRET_MARKERS", "env_state", "looks_secret"]

# Variables that change what an ML run computes or how fast, and carry no secrets.
DEFAULT_ALLOWLIST: tuple[str, ...] = (
    "CUDA_VISIBLE_DEVICES",
    "CUDA_LAUNCH_BLOCKING",
    "CUDA_DEVICE_ORDER",
    "CUBLAS_WORKSPACE_CONFIG",
    "NVIDIA_VISIBLE_DEVICES",
    "HIP_VISIBLE_DEVICES",
    "ROCR_VISIBLE_DEVICES",
    "NCCL_*",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "PYTHONHASHSEED",
    "PYTHONPATH",
    "PYTORCH_CUDA_ALLOC_CONF",
    "TORCH_DETERMINISTIC",
    "CUDNN_DETERMINISTIC",
    "TF_DETERMINISTIC_OPS",
    "TF_CUDNN_DETERMINISTIC",
    "XLA_FLAGS",
    "JAX_ENABLE_X64",
    "JAX_PLATFORMS",
    "VIRTUAL_ENV",
    "CONDA_DEFAULT_ENV",
    "CONDA_PREFIX",
    "SLURM_JOB_ID",
    "SLURM_ARRAY_TASK_ID",
    "LANG",
    "LC_ALL",
    "TZ",
)

SECRET_MARKERS: tuple[str, ...] = SECRET_VARIABLE_MARKERS


def looks_secret(name: str) -> bool:
    """Whether a variable name looks like it holds a secret (never recorded): a marker of
    ``SECRET_MARKERS`` or a word such as ``PWD`` or ``JWT`` (``lineage_core.redact``)."""
    return secret_variable(name)


def _variables(allowlist: Sequence[str], environ: Mapping[str, str]) -> dict[str, str]:
    chosen: dict[str, str] = {}
    for name, value in environ.items():
        if looks_secret(name):
            continue
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in allowlist):
            chosen[name] = value
    # Values too: DATABASE_URL=postgres://u:PASSWORD@..., HTTPS_PROXY=http://u:p@proxy.
    return Redactor().variables(dict(sorted(chosen.items())), drop_secret=True)


def _describe(python: str | None, environ: Mapping[str, str]) -> dict[str, object]:
    if python is None or _same_interpreter(python):
        return _envprobe.describe()
    # The probe's own source, run as ``-c`` so sys.path is what the command would see.
    probe = Path(_envprobe.__file__).read_text(encoding="utf-8")
    done = subprocess.run(
        [python, "-c", probe],
        capture_output=True,
        env=dict(environ),
        timeout=120,
        check=True,
    )
    described: dict[str, object] = json.loads(done.stdout)
    return described


def _same_interpreter(python: str) -> bool:
    try:
        return os.path.samefile(python, sys.executable)
    except OSError:
        return False


def env_state(
    allowlist: Sequence[str] = DEFAULT_ALLOWLIST,
    *,
    python: str | None = None,
    environ: Mapping[str, str] | None = None,
) -> EnvState:
    """Describe the environment: this interpreter, or ``python`` when it names another one.

    ``environ`` (default ``os.environ``) supplies the variables; patterns in ``allowlist``
    are ``fnmatch`` patterns (``CUDA_*``). Raises ``OSError`` or
    ``subprocess.SubprocessError`` when another interpreter cannot be asked.
    """
    environment = os.environ if environ is None else environ
    described = _describe(python, environment)
    raw_packages = described.get("packages", [])
    packages = tuple(str(item) for item in raw_packages) if isinstance(raw_packages, list) else ()
    return EnvState(
        python_version=str(described.get("python_version", "")),
        implementation=str(described.get("implementation", "")),
        platform=str(described.get("platform", "")),
        packages=packages,
        packages_digest=blake3.blake3("\n".join(packages).encode()).hexdigest(),
        variables=_variables(allowlist, environment),
    )
