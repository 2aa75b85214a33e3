"""The systemd units pass ``systemd-analyze verify`` and keep their measured exposure score.

``systemd-analyze`` works offline (no running systemd needed, as in a container): ``verify``
loads the unit with the manager's parser and ``security --offline=yes`` scores the file.
The user unit is checked with ``--user``, which only needs ``$XDG_RUNTIME_DIR`` to exist.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

SYSTEMD_DIR = Path(__file__).resolve().parent.parent / "systemd"
SYSTEM_UNIT = SYSTEMD_DIR / "lineaged.service"
USER_UNIT = SYSTEMD_DIR / "user" / "lineaged.service"
EXAMPLE_CONFIG = SYSTEMD_DIR / "lineaged.toml.example"

# Measured with systemd 252: system unit 0.4, user unit 5.9. The offline assessment scores
# every unit as if a system manager ran it as root, so the user unit is charged for
# capabilities and namespaces that a user manager's services never have or cannot get.
SYSTEM_EXPOSURE_MAX = 2.0
USER_EXPOSURE_MAX = 6.5

# Warnings that `verify` prints without failing on some versions: misspelt keys and
# sections, and values it could not parse and ignores.
VERIFY_WARNINGS = re.compile(r"Unknown key|Unknown section|Unknown lvalue|ignoring", re.IGNORECASE)

requires_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def analyze_env(tmp_path: Path) -> dict[str, str]:
    """An environment in which systemd-analyze prints plain, parseable text."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("SYSTEMD_")}
    env.update(
        SYSTEMD_LOG_LEVEL="info",  # warnings must not be filtered out by the caller's level
        SYSTEMD_LOG_COLOR="0",
        SYSTEMD_COLORS="0",
        SYSTEMD_PAGER="",
        XDG_RUNTIME_DIR=str(runtime),  # a --user manager refuses to start without it
    )
    return env


def run_analyze(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["systemd-analyze", "--no-pager", *args],
        capture_output=True,
        text=True,
        env=analyze_env(tmp_path),
        timeout=60,
    )


def lineaged_executable() -> Path:
    """The installed ``lineaged`` console script, which verify requires to be executable."""
    beside_python = Path(sys.executable).parent / "lineaged"
    if beside_python.is_file() and os.access(beside_python, os.X_OK):
        return beside_python
    found = shutil.which("lineaged")
    if found is None:
        pytest.skip("the lineaged console script is not installed (pip install -e .)")
    return Path(found)


def unit_with_real_exec_start(unit: Path, tmp_path: Path) -> Path:
    """A copy of ``unit`` whose ExecStart runs the installed console script."""
    text = unit.read_text()
    lines = text.splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("ExecStart=")]
    assert len(starts) == 1, "expected exactly one ExecStart= line"
    program, _, arguments = lines[starts[0]].removeprefix("ExecStart=").partition(" ")
    assert program.endswith("/lineaged"), program
    lines[starts[0]] = f"ExecStart={lineaged_executable()} {arguments}"
    copy_dir = tmp_path / ("user" if unit == USER_UNIT else "system")
    copy_dir.mkdir()
    copy = copy_dir / unit.name
    copy.write_text("\n".join(lines) + "\n")
    return copy


def exposure(output: str) -> float:
    match = re.search(
        r"Overall exposure level for lineaged\.service:\s*([0-9]+(?:\.[0-9]+)?)", output
    )
    assert match, f"no exposure level in:\n{output}"
    return float(match.group(1))


def service_settings(unit: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of the [Service] section (keys may repeat)."""
    settings: dict[str, list[str]] = {}
    section = ""
    for raw in unit.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line
            continue
        if section == "[Service]":
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


@requires_analyze
@pytest.mark.parametrize(
    ("unit", "mode"), [(SYSTEM_UNIT, []), (USER_UNIT, ["--user"])], ids=["system", "user"]
)
def test_unit_verifies_cleanly(unit: Path, mode: list[str], tmp_path: Path) -> None:
    copy = unit_with_real_exec_start(unit, tmp_path)
    result = run_analyze(tmp_path, *mode, "verify", "--recursive-errors=yes", "--man=no", str(copy))
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert not VERIFY_WARNINGS.search(output), output


@requires_analyze
def test_verify_catches_a_misspelt_key(tmp_path: Path) -> None:
    """The check above can fail: a typo in a hardening key is reported, not silently dropped."""
    copy = unit_with_real_exec_start(SYSTEM_UNIT, tmp_path)
    copy.write_text(copy.read_text().replace("ProtectSystem=strict", "ProtectSystm=strict"))
    result = run_analyze(tmp_path, "verify", "--recursive-errors=yes", "--man=no", str(copy))
    assert VERIFY_WARNINGS.search(result.stdout + result.stderr)


@requires_analyze
def test_system_unit_exposure(tmp_path: Path) -> None:
    result = run_analyze(tmp_path, "security", "--offline=yes", str(SYSTEM_UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    score = exposure(result.stdout)
    print(f"system unit exposure: {score}")
    assert score <= SYSTEM_EXPOSURE_MAX, result.stdout


@requires_analyze
def test_user_unit_exposure(tmp_path: Path) -> None:
    result = run_analyze(tmp_path, "--user", "security", "--offline=yes", str(USER_UNIT))
    assert result.returncode == 0, result.stdout + result.stderr
    score = exposure(result.stdout)
    print(f"user unit exposure: {score}")
    assert score <= USER_EXPOSURE_MAX, result.stdout


def test_units_agree_with_the_daemon_contract() -> None:
    """Settings the daemon relies on: notify + watchdog, private state, where the socket goes."""
    system = service_settings(SYSTEM_UNIT)
    user = service_settings(USER_UNIT)
    for settings in (system, user):
        assert settings["Type"] == ["notify"]
        assert settings["NotifyAccess"] == ["main"]
        assert settings["WatchdogSec"] == ["30s"]
        assert settings["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
        assert settings["RuntimeDirectory"] == ["lineaged"]
        assert settings["UMask"] == ["0077"]
        assert "--config" in settings["ExecStart"][0]
    assert system["StateDirectory"] == ["lineaged"]
    assert system["StateDirectoryMode"] == ["0700"]
    assert system["RuntimeDirectoryMode"] == ["0750"]
    assert system["User"] == system["Group"] == ["lineaged"]
    # Per-user store stays at the daemon's own default (see the comment in the user unit).
    assert "StateDirectory" not in user
    assert user["RuntimeDirectoryMode"] == ["0700"]
    assert "User" not in user


def test_example_config_matches_the_system_unit(tmp_path: Path) -> None:
    from lineage_core.models import Role

    from lineaged.config import load_config

    raw = tomllib.loads(EXAMPLE_CONFIG.read_text())
    # Under systemd the state and socket paths come from the unit, so they stay commented out.
    assert "state_dir" not in raw
    assert "socket" not in raw

    # What the daemon makes of the example inside the system unit's environment.
    environ = {
        "STATE_DIRECTORY": str(tmp_path / "var-lib-lineaged"),
        "RUNTIME_DIRECTORY": str(tmp_path / "run-lineaged"),
        "HOME": str(tmp_path),
    }
    config = load_config(argparse.Namespace(config=str(EXAMPLE_CONFIG)), environ)
    assert config.state_dir == tmp_path / "var-lib-lineaged"
    assert config.socket == tmp_path / "run-lineaged" / "lineaged.sock"
    # The group that may enter the 0750 runtime directory is the unit's own Group=.
    assert [config.socket_group] == service_settings(SYSTEM_UNIT)["Group"]
    assert {root.role for root in config.roots} == {Role.DATA, Role.MODEL}
    assert not config.listen, "TCP stays off: the hardened unit has no network"
