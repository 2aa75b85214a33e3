"""Boot hook of ``lineage run``: records which files this Python process touches.

``lineage run`` puts this folder first on the child's ``PYTHONPATH``, so :mod:`site`
imports this module at interpreter start in the command and in every Python process it
spawns (subprocesses, ``multiprocessing`` spawn/forkserver workers). It does nothing but
chain the ``sitecustomize`` it shadows unless ``LINEAGE_TRACE_DIR`` is set; then it adds
an audit hook (PEP 578) and writes one trace file per process into that folder.

Trace format, one record a line, tab-separated, paths escaped (``\\`` ``\\n`` ``\\t``)
and written as file-system bytes::

    h  <pid>   <start_ns>  <executable>          header
    r  <first> <last>      <path>                opened for reading
    w  <first> <last>      <path>                opened for writing
    m  <t>     <t>         <src>  <dst>          os.rename / os.replace
    d  <t>     <t>         <path>                os.remove / os.unlink
    s  <t>     <t>         <path>                a module or script this process ran
    x  <t>     <t>         <program>             a program this process started

Records go into a shared memory mapping of the trace file: no system call per record,
and what is written survives a kill, SIGKILL included, because the pages belong to the
file. Each path is written once, when first seen; its last access time is written again
at exit. The file grows in zero-filled chunks, so the reader ignores NUL bytes and any
line that is not complete. The hook never raises into user code.
"""

from __future__ import annotations

import os
import sys

_BOOT_DIR = os.path.dirname(os.path.abspath(__file__))
_CHUNK = 1 << 18
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def _escape(path: str) -> str:
    if "\\" in path or "\n" in path or "\t" in path:
        return path.replace("\\", "\\\\").replace("\n", "\\n").replace("\t", "\\t")
    return path


def _install(trace_dir: str) -> None:
    # (b) runs in every traced Python process: one closure, so the hot path reads fast
    # locals and cells rather than globals.
    import atexit
    import mmap
    import time
    from _thread import RLock

    time_ns = time.time_ns
    fsdecode = os.fsdecode
    getcwd = os.getcwd
    write_flags = _WRITE_FLAGS
    started_at = time_ns()
    start_cwd = getcwd()
    # "0" when the LD_PRELOAD interposer records this process's opens (it sees them all,
    # native ones included): the hook then keeps to what only it knows, the sources.
    trace_opens = os.environ.get("LINEAGE_HOOK_OPENS", "1") != "0"
    trace_dir = os.path.abspath(trace_dir)

    ignored: list[str] = [trace_dir, _BOOT_DIR, "/proc", "/sys", "/dev"]
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        ignored.append(prefix)
    site_module = sys.modules.get("site")
    if site_module is not None:
        try:
            ignored.extend(site_module.getsitepackages())
            ignored.append(site_module.getusersitepackages())
        except Exception:
            pass
    ignored.extend(p for p in os.environ.get("LINEAGE_TRACE_EXCLUDE", "").split(os.pathsep) if p)
    # A bare "/" would swallow everything; a prefix ends with "/" so "/usr" spares "/usrdata".
    candidates = sorted({p.rstrip("/") + "/" for p in ignored if p and p.rstrip("/")}, key=len)
    kept: list[str] = []
    for candidate in candidates:
        if not candidate.startswith(tuple(kept)):  # inside a shorter one: adds nothing
            kept.append(candidate)
    ignored_prefixes = tuple(kept)

    # path -> first access (0: ignored path), and path -> last access once opened again.
    # Plain ints, not per-path lists: containers would feed the cyclic GC, which then
    # rescans them all.
    read_first: dict[str, int] = {}
    read_last: dict[str, int] = {}
    write_first: dict[str, int] = {}
    write_last: dict[str, int] = {}
    import_times: dict[str, int] = {}
    main_script: list[str] = []
    cwd: str | None = start_cwd.rstrip("/") + "/"
    # Re-entrant: a signal handler may run (and open files) while a record is being put.
    lock = RLock()
    fd = -1
    mapping: mmap.mmap | None = None
    mapped_end = 0

    def open_trace() -> None:
        nonlocal fd, mapping, mapped_end
        name = f"{os.getpid()}-{os.urandom(4).hex()}.trace"
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
        fd = os.open(os.path.join(trace_dir, name), flags, 0o600)
        mapping, mapped_end = None, 0
        put(f"h\t{os.getpid()}\t{started_at}\t{_escape(sys.executable)}\n")

    def put(line: str) -> None:
        try:
            data = line.encode("utf-8", "surrogateescape")
        except UnicodeEncodeError:
            data = line.encode("utf-8", "backslashreplace")
        store(data)

    def store(data: bytes) -> None:
        # mmap.write copies and moves the mapping's position in one C call, which no
        # thread switch or signal handler can split: the common case takes no lock.
        current = mapping
        if current is not None:
            try:
                current.write(data)
                return
            except ValueError:
                pass  # the chunk is full (or the mapping closed): open the next one
        grow(current, data)

    def grow(full: mmap.mmap | None, data: bytes) -> None:
        nonlocal fd, mapping, mapped_end
        if fd < 0 or len(data) > _CHUNK:
            return
        with lock:
            current = mapping
            if current is full:
                # Grow the file by a zero-filled chunk and map it; the rest of the old
                # chunk stays NUL, which the reader skips. Allocated, not just truncated:
                # on a full disk a store into a sparse mapping is a SIGBUS; this fails here
                # instead, and the process goes on unrecorded.
                try:
                    os.posix_fallocate(fd, mapped_end, _CHUNK)
                except OSError:
                    fd = -1
                    mapping = None
                    return
                current = mapping = mmap.mmap(fd, _CHUNK, offset=mapped_end)
                mapped_end += _CHUNK
            if current is not None:
                try:
                    current.write(data)
                except ValueError:
                    grow(current, data)  # another thread filled the new chunk first

    def sources() -> list[str]:
        lines = []
        # CPython drops __main__.__file__ once the script returns: it was noted at start.
        for path in main_script:
            if not path.startswith(ignored_prefixes):
                lines.append(f"s\t{started_at}\t{started_at}\t{_escape(path)}\n")
        for name, module in list(sys.modules.items()):
            try:
                # __dict__ never reaches a module-level __getattr__, which may import things.
                namespace = getattr(module, "__dict__", None)
                file = namespace.get("__file__") if isinstance(namespace, dict) else None
                if not isinstance(file, str) or not file or file.startswith("<"):
                    continue
                path = file if file[:1] == "/" else os.path.join(start_cwd, file)
                if path.startswith(ignored_prefixes) or path.endswith(".pyc"):
                    continue
                when = import_times.get(name, started_at)
                lines.append(f"s\t{when}\t{when}\t{_escape(path)}\n")
            except Exception:
                continue
        return lines

    def final() -> None:
        try:
            lines = []
            # Each path was written when first seen: what is left is its last access.
            for kind, first_of, last_of in (
                ("r", read_first, read_last),
                ("w", write_first, write_last),
            ):
                for path, last in list(last_of.items()):
                    first = first_of.get(path, 0)
                    if first and last != first:
                        lines.append(f"{kind}\t{first}\t{last}\t{_escape(path)}\n")
            lines.extend(sources())
            for line in lines:
                put(line)
        except Exception:
            pass

    def absolute(raw: object, dir_fd: object = None) -> str | None:
        nonlocal cwd
        if isinstance(raw, str):
            path = raw
        elif isinstance(raw, (bytes, os.PathLike)):
            path = fsdecode(raw)
        else:
            return None
        if path[:1] == "/":
            return path
        if isinstance(dir_fd, int) and dir_fd >= 0:
            return os.readlink(f"/proc/self/fd/{dir_fd}") + "/" + path
        if cwd is None:
            cwd = getcwd().rstrip("/") + "/"
        return cwd + path

    def first_seen(writing: bool, path: str) -> None:
        first_of = write_first if writing else read_first
        if path.startswith(ignored_prefixes):
            first_of[path] = 0
            return
        now = time_ns()
        first_of[path] = now
        put(f"{'w' if writing else 'r'}\t{now}\t{now}\t{_escape(path)}\n")

    def on_rename(args: tuple[object, ...]) -> None:
        source = absolute(args[0], args[2] if len(args) > 2 else None)
        target = absolute(args[1], args[3] if len(args) > 3 else None)
        if source is not None and target is not None:
            now = time_ns()
            put(f"m\t{now}\t{now}\t{_escape(source)}\t{_escape(target)}\n")

    def on_remove(args: tuple[object, ...]) -> None:
        path = absolute(args[0], args[1] if len(args) > 1 else None)
        if path is not None and not path.startswith(ignored_prefixes):
            now = time_ns()
            put(f"d\t{now}\t{now}\t{_escape(path)}\n")

    def on_truncate(args: tuple[object, ...]) -> None:
        path = absolute(args[0])
        if path is not None:
            if path in write_first:
                write_last[path] = time_ns()
            else:
                first_seen(True, path)

    def on_chdir(args: tuple[object, ...]) -> None:
        nonlocal cwd
        # The event comes before the call: look the new cwd up lazily, after it happened.
        cwd = None

    def on_import(args: tuple[object, ...]) -> None:
        name = args[0]
        if isinstance(name, str) and name not in import_times:
            import_times[name] = time_ns()

    def on_run_file(args: tuple[object, ...]) -> None:
        path = absolute(args[0])
        if path is not None:
            main_script.append(path)

    def note_program(program: object) -> None:
        # Python programs load this hook too; the wrapper warns about the others, whose
        # file accesses no one records.
        if isinstance(program, (list, tuple)):
            program = program[0] if program else None
        if isinstance(program, (bytes, os.PathLike)):
            program = fsdecode(program)
        if isinstance(program, str) and program:
            now = time_ns()
            put(f"x\t{now}\t{now}\t{_escape(program)}\n")

    def on_popen(args: tuple[object, ...]) -> None:
        executable, argv = args[0], args[1]
        if executable is None and isinstance(argv, (str, bytes)):
            # A string command: the program is its first word, or the shell with shell=True.
            argv = os.fsdecode(argv).split()
        note_program(executable if executable is not None else argv)

    def on_system(args: tuple[object, ...]) -> None:
        command = args[0]
        if isinstance(command, (str, bytes)):
            words = os.fsdecode(command).split()
            note_program(words[0] if words else None)

    def on_spawn(args: tuple[object, ...]) -> None:
        note_program(args[0])  # os.posix_spawn(path, argv, env)

    def on_spawnv(args: tuple[object, ...]) -> None:
        note_program(args[1])  # os.spawn*(mode, path, args, env)

    def on_exec(args: tuple[object, ...]) -> None:
        note_program(args[0])
        # exec replaces the image without running atexit: write the rest now.
        final()

    handlers = {
        "os.rename": on_rename,
        "os.remove": on_remove,
        "os.truncate": on_truncate,
        "os.chdir": on_chdir,
        "import": on_import,
        "cpython.run_file": on_run_file,
        "os.exec": on_exec,
        "subprocess.Popen": on_popen,
        "os.system": on_system,
        "os.posix_spawn": on_spawn,
        "os.spawn": on_spawnv,
    }
    get_handler = handlers.get

    def hook(event: str, args: tuple[object, ...]) -> None:
        # The hot path of a run that opens many files: everything for a read inlined.
        nonlocal cwd
        if event != "open":
            handler = get_handler(event)
            if handler is not None:
                # Plain try: contextlib.suppress costs a context manager per event.
                try:  # noqa: SIM105
                    handler(args)
                except Exception:
                    pass
            return
        if not trace_opens:
            return
        try:
            path = args[0]
            if not isinstance(path, str):
                if isinstance(path, (bytes, os.PathLike)):
                    path = fsdecode(path)
                else:
                    return  # an fd: the file behind it was recorded when it was opened
            if path[:1] != "/":
                if cwd is None:
                    cwd = getcwd().rstrip("/") + "/"
                path = cwd + path
            flags = args[2]
            if isinstance(flags, int):
                writing = flags & write_flags != 0
            else:
                mode = args[1]
                writing = isinstance(mode, str) and any(c in mode for c in "wax+")
            if writing:
                if path in write_first:
                    write_last[path] = time_ns()
                else:
                    first_seen(True, path)
                return
            if path in read_first:
                read_last[path] = time_ns()
                return
            if path.startswith(ignored_prefixes):
                read_first[path] = 0
                return
            now = time_ns()
            read_first[path] = now
            if "\\" in path or "\n" in path or "\t" in path:
                path = _escape(path)
            stamp = str(now)
            put(f"r\t{stamp}\t{stamp}\t{path}\n")
        except Exception:
            pass

    def after_fork_in_child() -> None:
        nonlocal fd, lock, cwd, mapping
        # The inherited mapping is the parent's file: this process gets its own.
        mapping = None
        try:
            lock = RLock()
            fd = -1
            for table in (read_first, read_last, write_first, write_last):
                table.clear()
            cwd = None
            open_trace()
        except Exception:
            fd = -1

    open_trace()
    os.register_at_fork(after_in_child=after_fork_in_child)
    atexit.register(final)
    sys.addaudithook(hook)


def _chain_next_sitecustomize() -> None:
    """Run the ``sitecustomize`` this one shadows, as ``site`` would have."""
    try:
        # (b) runs in every traced Python process, which loads as little as it can.
        import importlib.machinery

        entries = [os.path.abspath(entry or ".") for entry in sys.path]
        position = entries.index(_BOOT_DIR) if _BOOT_DIR in entries else -1
        rest = [entry for entry in sys.path[position + 1 :] if entry]
        spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
        if spec is None or spec.loader is None or spec.origin is None:
            return
        if os.path.realpath(spec.origin) == os.path.realpath(__file__):
            return  # another copy of our folder on the path: running it again would loop
        import importlib.util  # (b) only now: it costs imports, and most runs chain nothing

        module = importlib.util.module_from_spec(spec)
        sys.modules["sitecustomize"] = module
        spec.loader.exec_module(module)
    except ImportError as exc:
        if exc.name != "sitecustomize":
            _report_chained_error(exc)
    except Exception as exc:
        _report_chained_error(exc)


def _report_chained_error(exc: BaseException) -> None:
    # The same words site.py prints, so a broken sitecustomize looks as it would without us.
    try:
        if sys.flags.verbose:
            sys.excepthook(type(exc), exc, exc.__traceback__)
        else:
            sys.stderr.write(
                "Error in sitecustomize; set PYTHONVERBOSE for traceback:\n"
                f"{exc.__class__.__name__}: {exc}\n"
            )
    except Exception:
        pass


def _main() -> None:
    directory = os.environ.get("LINEAGE_TRACE_DIR")
    if directory and os.path.isdir(directory):
        # Not contextlib.suppress: importing contextlib would slow every interpreter start.
        try:  # noqa: SIM105
            _install(directory)
        except Exception:
            pass
    _chain_next_sitecustomize()
    # Out of sys.path once started: user code should not find our folder; children get it
    # again from PYTHONPATH.
    try:
        while _BOOT_DIR in sys.path:
            sys.path.remove(_BOOT_DIR)
    except ValueError:
        pass


_main()
