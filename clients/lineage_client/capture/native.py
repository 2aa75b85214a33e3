"""The LD_PRELOAD interposer: built on first use, loaded into every process of a run.

The C source ships in ``_preload/interpose.c`` (see its header for what it records). It is
compiled with the system C compiler (``$CC``, else ``cc``, ``gcc`` or ``clang``) into a
per-user cache folder, keyed by the digest of the source and the machine, so a new
version of the source is built once and an unchanged one never again. The interposer sees
every file a dynamically linked program opens through libc — Python, Arrow's C++, Polars'
Rust, HDF5, SQLite, ``gzip`` — but not what a static or Go program, a raw ``syscall()`` or
io_uring does: :func:`escape_reason` tells which programs it cannot load into.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import subprocess
import sys
import threading
from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # typing costs milliseconds on the way to starting the command
    from typing import Literal

__all__ = [
    "SOURCE",
    "Interposer",
    "build_interposer",
    "cache_dir",
    "escape_reason",
    "offer_strace",
    "preload_environment",
]

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_preload", "interpose.c")
_ELF_MAGIC = b"\x7fELF"
_PT_INTERP = 3


class Interposer:
    """The built library (``path``), or why there is none (``problem``).

    Not a dataclass: this runs on the way to starting the command (see ``plan.py``).
    """

    __slots__ = ("path", "problem")

    def __init__(self, path: str = "", problem: str = "") -> None:
        self.path = path
        self.problem = problem


def _which(program: str, search: str) -> str | None:
    """``shutil.which`` for a bare name, without importing shutil (and re) before the command."""
    for folder in search.split(os.pathsep):
        candidate = os.path.join(folder or os.curdir, program)
        if os.access(candidate, os.F_OK | os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def cache_dir(env: Mapping[str, str] | None = None) -> str:
    """Where built interposers are kept: ``$XDG_CACHE_HOME/lineage``, else ``~/.cache/lineage``."""
    environment = os.environ if env is None else env
    base = environment.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "lineage")


def _compiler(env: Mapping[str, str]) -> str | None:
    search = env.get("PATH", os.defpath)
    wanted = env.get("CC", "")
    candidates = [wanted] if wanted else ["cc", "gcc", "clang"]
    for name in candidates:
        found = name if os.path.isabs(name) and os.access(name, os.X_OK) else _which(name, search)
        if found is not None:
            return found
    return None


@functools.cache
def _build(search_path: str, cc: str, folder: str) -> Interposer:
    # Keyed by the PATH, CC and cache folder the caller saw, so a test that hides the
    # compiler is not answered from an earlier call's cache of this process.
    env = {"PATH": search_path, **({"CC": cc} if cc else {})}
    try:
        with open(SOURCE, "rb") as stream:
            source = stream.read()
    except OSError as exc:
        return Interposer(problem=f"its source is missing ({exc.strerror or exc})")
    key = hashlib.sha256(source + os.uname().machine.encode() + sys.platform.encode())
    target = os.path.join(folder, f"interpose-{key.hexdigest()[:20]}.so")
    if os.path.exists(target):
        return Interposer(path=target)
    compiler = _compiler(env)
    if compiler is None:
        return Interposer(problem="no C compiler (cc, gcc or clang) to build it")
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
    except OSError as exc:
        return Interposer(problem=f"cannot create {folder} ({exc.strerror or exc})")
    scratch = f"{target}.{os.getpid()}.tmp"
    command = [compiler, "-shared", "-fPIC", "-O2", "-o", scratch, SOURCE, "-ldl"]
    try:
        done = subprocess.run(command, capture_output=True, timeout=120, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return Interposer(problem=f"{os.path.basename(compiler)} failed to run ({exc})")
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        detail = lines[0] if lines else f"exit status {done.returncode}"
        _discard(scratch)
        return Interposer(problem=f"{os.path.basename(compiler)} could not build it: {detail}")
    problem = _load_problem(scratch)
    if problem:
        _discard(scratch)
        return Interposer(problem=f"the built library does not load: {problem}")
    os.replace(scratch, target)  # atomic: a concurrent build of the same source is equal
    return Interposer(path=target)


def _discard(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _load_problem(library: str) -> str:
    """What the dynamic loader says when it loads ``library`` into ``true`` ("" if nothing)."""
    program = _which("true", os.defpath) or "/bin/true"
    env = {"PATH": os.defpath, "LD_PRELOAD": library}
    try:
        done = subprocess.run([program], env=env, capture_output=True, timeout=30, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    message = done.stderr.decode(errors="replace").strip()
    return message.splitlines()[0] if message else ""


def build_interposer(env: Mapping[str, str] | None = None) -> Interposer:
    """The interposer for this machine, built and cached on first use (see module doc)."""
    environment = os.environ if env is None else env
    return _build(
        environment.get("PATH", os.defpath), environment.get("CC", ""), cache_dir(environment)
    )


def preload_environment(base: Mapping[str, str], library: str) -> dict[str, str]:
    """``base`` with ``library`` first in ``LD_PRELOAD`` (the hook's variables set already),
    and the audit hook told to leave opens to it."""
    env = dict(base)
    previous = env.get("LD_PRELOAD", "")
    env["LD_PRELOAD"] = library + (" " + previous if previous else "")
    env["LINEAGE_HOOK_OPENS"] = "0"  # the audit hook leaves opens to the interposer
    return env


def escape_reason(program: str, *, depth: int = 0) -> str:
    """Why the interposer cannot load into ``program`` ("" when it can).

    "static" (no dynamic loader), "setuid" (the loader ignores LD_PRELOAD) or "32-bit";
    a ``#!`` script is judged by its interpreter.
    """
    try:
        with open(program, "rb") as stream:
            info = os.fstat(stream.fileno())
            if info.st_mode & 0o6000 and (info.st_uid != os.getuid() or info.st_gid != os.getgid()):
                return "setuid"
            head = stream.read(256)
            if head.startswith(b"#!"):
                words = head[2:].split(b"\n", 1)[0].split()
                if words and words[0].startswith(b"/") and depth < 3:
                    return escape_reason(os.fsdecode(words[0]), depth=depth + 1)
                return ""
            if not head.startswith(_ELF_MAGIC) or len(head) < 64:
                return ""
            if head[4] != 2:
                return "32-bit"
            order: Literal["little", "big"] = "little" if head[5] == 1 else "big"
            phoff = int.from_bytes(head[32:40], order)
            phentsize = int.from_bytes(head[54:56], order)
            phnum = int.from_bytes(head[56:58], order)
            stream.seek(phoff)
            table = stream.read(phentsize * min(phnum, 128))
    except OSError:
        return ""
    for index in range(len(table) // max(phentsize, 1)):
        entry = table[index * phentsize : index * phentsize + 4]
        if int.from_bytes(entry, order) == _PT_INTERP:
            return "go" if _is_go(program, head, order) else ""
    return "static"


def _is_go(program: str, head: bytes, order: Literal["little", "big"]) -> bool:
    """Whether the ELF ``program`` has Go's ``.go.buildinfo`` section (its file calls bypass
    libc even when it is dynamically linked)."""
    shoff = int.from_bytes(head[40:48], order)
    shentsize = int.from_bytes(head[58:60], order)
    shnum = int.from_bytes(head[60:62], order)
    shstrndx = int.from_bytes(head[62:64], order)
    if not shoff or shentsize != 64 or shstrndx >= shnum or shnum > 4096:
        return False
    try:
        with open(program, "rb") as stream:
            stream.seek(shoff)
            table = stream.read(shentsize * shnum)
            names = table[shstrndx * 64 : shstrndx * 64 + 64]
            names_offset = int.from_bytes(names[24:32], order)
            names_size = int.from_bytes(names[32:40], order)
            stream.seek(names_offset)
            strings = stream.read(min(names_size, 1 << 20))
    except OSError:
        return False
    wanted = b".go.buildinfo\0"
    for index in range(shnum):
        name = int.from_bytes(table[index * 64 : index * 64 + 4], order)
        if strings[name : name + len(wanted)] == wanted:
            return True
    return False


def offer_strace(trace_dir: str, search_path: str, cache: str) -> threading.Thread | None:
    """Let the interposer hand the programs it cannot see to strace, once strace is known to
    trace here: its options go to ``trace_dir/strace.argv``, which the interposer reads at
    such an exec (until then, such a program is reported as escaped).

    The verdict of strace's probes is kept in ``cache`` for this strace and this boot: then
    the file is written at once. Otherwise a thread probes beside the command (returned:
    join it before reading the traces).
    """
    strace = _which("strace", search_path)
    if strace is None:
        return None
    try:
        info = os.stat(strace)
        with open("/proc/sys/kernel/random/boot_id", "rb") as stream:
            boot = stream.read().strip()
    except OSError:
        return None
    key = hashlib.sha256(
        os.fsencode(os.path.realpath(strace)) + f":{info.st_mtime_ns}:".encode() + boot
    ).hexdigest()[:20]
    verdict = os.path.join(cache, f"strace-{key}.argv")
    target = os.path.join(trace_dir, "strace.argv")
    try:
        with open(verdict, "rb") as stream:
            _write_atomically(target, stream.read())
        return None
    except OSError:
        pass

    def probe() -> None:
        # (a) `lineage run` start-up: not loaded before the command is exec'd
        from lineage_client.capture.strace import strace_command, strace_problem

        try:
            if strace_problem(strace):
                return
            options = strace_command(strace, [], "-")[:-3]  # without "-o", output, "--"
            text = "".join(option + "\n" for option in options).encode("utf-8", "surrogateescape")
            _write_atomically(target, text)
            os.makedirs(cache, mode=0o700, exist_ok=True)
            _write_atomically(verdict, text)
        except OSError:
            return  # the interposer then reports such programs as escaped

    thread = threading.Thread(target=probe, name="lineage-strace-offer", daemon=True)
    thread.start()
    return thread


def _write_atomically(path: str, data: bytes) -> None:
    scratch = f"{path}.{os.getpid()}.tmp"
    with open(scratch, "wb") as stream:
        stream.write(data)
    os.replace(scratch, path)
