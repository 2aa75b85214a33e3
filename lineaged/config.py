"""The daemon's configuration: TOML file, then command-line flags (flags win)."""

from __future__ import annotations

import argparse
import fnmatch
import itertools
import os
import re
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from lineage_core.errors import ConfigError
from lineage_core.limits import DEFAULT_MAX_MESSAGE_BYTES
from lineage_core.models import Keep, Role, Root
from lineage_core.paths import default_socket, default_state_dir

__all__ = [
    "DEFAULT_IGNORE",
    "Config",
    "IgnoreRules",
    "load_config",
    "parse_size",
    "parse_watch",
]

# Editor swap and backup files, partial downloads, temporaries, VCS metadata, byte code.
DEFAULT_IGNORE: tuple[str, ...] = (
    ".git/",
    ".hg/",
    ".svn/",
    "__pycache__/",
    ".lineaged/",
    "*.swp",
    "*.swo",
    "*.swx",
    ".*.sw?",
    "*~",
    "#*#",
    ".#*",
    "4913",  # vim's probe file when checking a directory is writable
    "*.tmp",
    "*.temp",
    "*.part",
    "*.crdownload",
    "~$*",
    ".~lock.*#",
    "*.pyc",
)


def _union(patterns: list[str]) -> re.Pattern[str] | None:
    if not patterns:
        return None
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns))


@dataclass(frozen=True, slots=True)
class IgnoreRules:
    """Patterns matched against a root-relative path: ``dir/`` names a directory anywhere,
    a pattern with a slash matches the relative path, any other the base name."""

    patterns: tuple[str, ...]
    # One compiled alternation per kind: the scan asks once per directory entry.
    _dirs: re.Pattern[str] | None = field(init=False, repr=False)
    _names: re.Pattern[str] | None = field(init=False, repr=False)
    _paths: re.Pattern[str] | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        dirs, names, paths = [], [], []
        for pattern in self.patterns:
            if pattern.endswith("/"):
                dirs.append(pattern.rstrip("/"))
            elif "/" in pattern:
                paths.append(pattern.lstrip("/"))
            else:
                names.append(pattern)
        object.__setattr__(self, "_dirs", _union(dirs))
        object.__setattr__(self, "_names", _union(names))
        object.__setattr__(self, "_paths", _union(paths))

    @property
    def name_pattern(self) -> Callable[[str], object] | None:
        """The compiled file-name matcher (``match`` of the alternation), for hot loops."""
        return self._names.match if self._names is not None else None

    @property
    def has_path_patterns(self) -> bool:
        """Whether some pattern must see the whole relative path, not just the name."""
        return self._paths is not None

    def ignores_name(self, name: str, *, is_dir: bool) -> bool:
        """Whether an entry with this base name is ignored wherever it is."""
        pattern = self._dirs if is_dir else self._names
        return pattern is not None and pattern.match(name) is not None

    def ignores(self, relpath: str, *, is_dir: bool = False) -> bool:
        """Whether a root-relative path (or anything above it) is ignored."""
        parts = relpath.split("/")
        for part in parts[:-1]:
            if self.ignores_name(part, is_dir=True):
                return True
        if self.ignores_name(parts[-1], is_dir=is_dir):
            return True
        return self._paths is not None and self._paths.match(relpath) is not None


@dataclass(frozen=True, slots=True)
class Config:
    """Everything the daemon needs to start."""

    roots: tuple[Root, ...]
    state_dir: Path
    socket: Path
    socket_group: str = ""
    log_level: str = "info"
    settle_ms: int = 200
    scan_interval: float = 600.0
    listen: str = ""
    token_file: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    max_concurrent_rpcs: int = 64
    once: bool = False
    config_file: str = ""
    # [redact] names / values: extra secret names (fnmatch) and value regexes (docs/security.md)
    redact_names: tuple[str, ...] = ()
    redact_values: tuple[str, ...] = ()
    openlineage: Mapping[str, Any] | None = None  # the [openlineage] table (ol_delivery.py)
    objects_dir: str = ""  # the content store's folder ("": <state_dir>/objects)
    objects_budget: int = 0  # bytes the content store may hold (0: no budget)

    @property
    def objects_path(self) -> Path:
        """Where the content store keeps its objects."""
        return Path(self.objects_dir) if self.objects_dir else self.state_dir / "objects"

    def ignore_rules(self, root: Root) -> IgnoreRules:
        """The default ignore patterns plus the root's own."""
        return IgnoreRules(DEFAULT_IGNORE + tuple(root.ignore))


def parse_watch(spec: str, *, base: Path | None = None) -> Root:
    """``PATH[:ROLE]`` to a Root with an absolute, normalised path."""
    path, role = spec, Role.OTHER
    head, sep, tail = spec.rpartition(":")
    if sep and tail in {r.value for r in Role}:
        path, role = head, Role(tail)
    elif sep and tail and "/" not in tail:
        raise ConfigError(
            f"--watch {spec!r}: unknown role {tail!r} (use data, model, code or other)"
        )
    if not path or "\x00" in path:
        raise ConfigError(f"--watch {spec!r}: empty path")
    # Resolved: the daemon compares paths with its roots and never follows a link, so a
    # root reached through a symbolic link is stored as the directory it names.
    absolute = Path(os.path.realpath(os.path.join(base or Path.cwd(), os.path.expanduser(path))))
    return Root(path=str(absolute), role=role)


def _root_from_toml(entry: Any, base: Path) -> Root:
    if not isinstance(entry, Mapping) or "path" not in entry:
        raise ConfigError("each [[roots]] entry needs a path")
    unknown = set(entry) - {"path", "role", "ignore", "keep", "max_hash_size"}
    if unknown:
        # A top-level key written after a [[roots]] header lands in that root: say so.
        raise ConfigError(
            f"root {entry['path']!r}: unknown keys {', '.join(sorted(unknown))} (top-level "
            "keys go before the first [[roots]])"
        )
    root = parse_watch(str(entry["path"]), base=base)
    role = entry.get("role", root.role.value)
    if role not in {r.value for r in Role}:
        raise ConfigError(f"root {entry['path']!r}: unknown role {role!r}")
    ignore = entry.get("ignore", [])
    if not isinstance(ignore, list) or not all(isinstance(p, str) for p in ignore):
        raise ConfigError(f"root {entry['path']!r}: ignore must be a list of patterns")
    max_hash_size = _hash_size_limit(entry.get("max_hash_size", 0), str(entry["path"]))
    keep = entry.get("keep", Keep.LINEAGE.value)
    if keep not in {k.value for k in Keep}:
        raise ConfigError(
            f'root {entry["path"]!r}: keep must be "lineage", "all" or "none", not {keep!r}'
        )
    return replace(
        root,
        role=Role(role),
        ignore=tuple(ignore),
        max_hash_size=max_hash_size,
        keep=Keep(keep),
    )


_SIZE_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40, "P": 1 << 50}


def _hash_size_limit(value: object, root: str) -> int:
    """A root's ``max_hash_size``: bytes as an integer, or "500G"-style text (powers of
    1024); 0 means no limit, the default (checkpoints of hundreds of GB are real data)."""
    if isinstance(value, bool):
        value = None
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = re.fullmatch(r"\s*(\d+)\s*([KMGTP]?)(?:i?B)?\s*", value, re.IGNORECASE)
        number = -1 if match is None else int(match.group(1)) * _SIZE_UNITS[match.group(2).upper()]
    else:
        number = -1
    if number < 0:
        raise ConfigError(
            f"root {root!r}: max_hash_size must be a size like 500G or a number of bytes "
            f"(0: no limit), not {value!r}"
        )
    return number


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(i?b?)\s*", re.IGNORECASE)


def parse_size(value: object) -> int:
    """A size in bytes from an integer or text such as ``"50G"``, ``"1.5 TiB"``, ``"800M"``."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    match = _SIZE.fullmatch(str(value)) if isinstance(value, str) else None
    if match is None:
        raise ConfigError(f"objects_budget: cannot read {value!r} as a size (e.g. 50G, 800M)")
    power = " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * 1024**power)


_TOML_KEYS = {
    "state_dir",
    "socket",
    "socket_group",
    "log_level",
    "settle_ms",
    "scan_interval",
    "listen",
    "token_file",
    "tls_cert",
    "tls_key",
    "max_message_bytes",
    "max_concurrent_rpcs",
    "roots",
    "redact",
    "openlineage",
    "objects_dir",
    "objects_budget",
}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    unknown = set(data) - _TOML_KEYS
    if unknown:
        raise ConfigError(f"config file {path}: unknown keys {', '.join(sorted(unknown))}")
    return data


def load_config(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Config:
    """Merge the TOML file named by ``--config`` with the flags; flags win."""
    env = os.environ if environ is None else environ
    data: dict[str, Any] = {}
    base = Path.cwd()
    if getattr(args, "config", None):
        config_path = Path(args.config).expanduser().absolute()
        data = _read_toml(config_path)
        base = config_path.parent

    roots_by_path: dict[str, Root] = {}
    for entry in data.get("roots", []):
        root = _root_from_toml(entry, base)
        roots_by_path[root.path] = root
    for spec in getattr(args, "watch", None) or []:
        root = parse_watch(spec)
        previous = roots_by_path.get(root.path)
        roots_by_path[root.path] = (
            replace(root, ignore=previous.ignore, keep=previous.keep) if previous else root
        )
    roots = tuple(roots_by_path.values())
    _check_nesting(roots)

    def pick(flag: str, key: str, default: Any) -> Any:
        value = getattr(args, flag, None)
        if value is not None:
            return value
        return data.get(key, default)

    state_dir = pick("state_dir", "state_dir", None)
    state = (
        Path(os.path.expanduser(str(state_dir))).absolute() if state_dir else default_state_dir(env)
    )
    socket = pick("socket", "socket", None)
    config = Config(
        roots=roots,
        state_dir=state,
        socket=Path(os.path.expanduser(str(socket))).absolute() if socket else default_socket(env),
        socket_group=str(pick("socket_group", "socket_group", "")),
        log_level=str(pick("log_level", "log_level", "info")).lower(),
        settle_ms=int(pick("settle_ms", "settle_ms", 200)),
        scan_interval=float(pick("scan_interval", "scan_interval", 600.0)),
        listen=str(pick("listen", "listen", "")),
        token_file=str(pick("token_file", "token_file", "")),
        tls_cert=str(pick("tls_cert", "tls_cert", "")),
        tls_key=str(pick("tls_key", "tls_key", "")),
        max_message_bytes=int(
            pick("max_message_bytes", "max_message_bytes", DEFAULT_MAX_MESSAGE_BYTES)
        ),
        max_concurrent_rpcs=int(pick("max_concurrent_rpcs", "max_concurrent_rpcs", 64)),
        once=bool(getattr(args, "once", False)),
        config_file=str(getattr(args, "config", "") or ""),
        **_redact_from_toml(data.get("redact", {})),
        openlineage=data.get("openlineage"),
        objects_dir=(
            str((base / os.path.expanduser(str(data["objects_dir"]))).absolute())
            if data.get("objects_dir")
            else ""
        ),
        objects_budget=parse_size(data.get("objects_budget", 0)),
    )
    _validate(config)
    return config


def _redact_from_toml(table: Any) -> dict[str, tuple[str, ...]]:
    """``[redact]`` with ``names`` (fnmatch patterns) and ``values`` (regular expressions)."""
    if not isinstance(table, Mapping):
        raise ConfigError("[redact] must be a table with 'names' and/or 'values' lists")
    unknown = set(table) - {"names", "values"}
    if unknown:
        raise ConfigError(f"[redact]: unknown keys {', '.join(sorted(unknown))}")
    found: dict[str, tuple[str, ...]] = {}
    for key in ("names", "values"):
        items = table.get(key, [])
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ConfigError(f"[redact] {key} must be a list of non-empty strings")
        found[f"redact_{key}"] = tuple(items)
    for pattern in found["redact_values"]:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ConfigError(
                f"[redact] values: {pattern!r} is not a regular expression: {exc}"
            ) from None
    return found


def _check_nesting(roots: Sequence[Root]) -> None:
    paths = sorted(r.path for r in roots)
    for outer, inner in itertools.pairwise(paths):
        if inner.startswith(outer.rstrip("/") + "/"):
            raise ConfigError(f"root {inner} is inside root {outer}; watch one or the other")


def _validate(config: Config) -> None:
    if config.log_level not in {"debug", "info", "warning", "error", "critical"}:
        raise ConfigError(f"unknown log level {config.log_level!r}")
    if not 0 <= config.settle_ms <= 60_000:
        raise ConfigError(f"settle_ms must be between 0 and 60000, got {config.settle_ms}")
    if config.scan_interval < 0:
        raise ConfigError("scan_interval must be >= 0 (0 turns periodic scans off)")
    if config.listen and not config.token_file:
        raise ConfigError(
            f"refusing to listen on TCP {config.listen} without authentication: give --token-file"
        )
    if bool(config.tls_cert) != bool(config.tls_key):
        raise ConfigError("TLS needs both --tls-cert and --tls-key")
    for root in config.roots:
        state = str(config.state_dir)
        if root.path == state or root.path.startswith(state.rstrip("/") + "/"):
            raise ConfigError(f"root {root.path} is inside the state directory {state}")
