"""The ``lineage`` command: parse, call one client method, render (``render.py``).

Errors print ``Error: <message>`` on stderr and exit with the exception's ``exit_code``
(2 usage / invalid argument, 3 not found, 4 daemon not running, 5 not allowed, 1 otherwise).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Callable, Sequence
from itertools import islice
from typing import TYPE_CHECKING, Any

from lineage_core.errors import InvalidArgument, LineageError, PermissionDenied

from lineage_client._terminal import escape, terminal_safe

if TYPE_CHECKING:
    from types import ModuleType

    from lineage_client.client import Client

    # lineage_core.models is imported by the commands that use it: `lineage run` starts its command
    # without it (building its dataclasses takes tens of milliseconds).

    Handler = Callable[[argparse.Namespace, Client], int]

__all__ = ["build_parser", "main"]


def _render() -> ModuleType:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_client import render

    return render


def _emit(args: argparse.Namespace, human: Callable[[], str], data: Callable[[], Any]) -> int:
    # Human text: names are escaped field by field; this pass catches anything left over.
    print(_render().dumps(data()) if args.json else terminal_safe(human()))
    return 0


# --- commands ----------------------------------------------------------------------------


def _status(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    status = client.status()
    return _emit(args, lambda: render.status_text(status), lambda: render.status_json(status))


def _log(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    versions = list(islice(client.iter_history(args.path), None if args.all else args.limit))
    return _emit(
        args,
        lambda: render.versions_table(versions, full=args.full) if versions else "no versions",
        lambda: {
            "path": os.path.abspath(args.path),
            "versions": [render.version_json(v) for v in versions],
        },
    )


def _where(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    versions = client.find_digest(args.digest)
    return _emit(
        args,
        lambda: render.versions_table(versions, full=args.full, with_path=True),
        lambda: {"digest": args.digest, "versions": [render.version_json(v) for v in versions]},
    )


def _lineage(way: str) -> Handler:
    def command(args: argparse.Namespace, client: Client) -> int:
        # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
        from lineage_core.models import Direction

        direction = Direction(way)
        render = _render()
        graph = client.lineage(
            args.target, direction, max_depth=args.depth, max_nodes=args.max_nodes
        )
        if args.json:
            print(render.dumps(render.graph_json(graph)))
        elif args.format == "dot":
            print(terminal_safe(render.graph_dot(graph, full=args.full)))
        elif args.format == "mermaid":
            print(terminal_safe(render.graph_mermaid(graph, full=args.full)))
        else:
            print(terminal_safe(render.graph_tree(graph, direction, full=args.full)))
        return 0

    return command


def _runs(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    runs = list(
        client.iter_runs(
            limit=args.limit,
            name=args.name or "",
            status=args.status,
            since=args.since,
            until=args.until,
        )
    )
    return _emit(
        args,
        lambda: render.runs_table(runs, full=args.full) if runs else "no runs",
        lambda: {"runs": [render.run_json(r) for r in runs]},
    )


def _show(args: argparse.Namespace, client: Client) -> int:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_core.models import Direction, StartNode

    render = _render()
    run = client.get_run(args.run)
    graph = client.lineage(StartNode(run_id=run.run_id), Direction.BOTH, max_depth=1)
    children = list(client.iter_runs(limit=1000, parent_run_id=run.run_id))
    return _emit(
        args,
        lambda: render.run_detail_text(
            run, graph, full=args.full, diff=args.diff, children=children
        ),
        lambda: render.run_detail_json(run, graph, children),
    )


def _verify(args: argparse.Namespace, client: Client) -> int:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_core.models import VerifyState

    render = _render()
    start, items = client.verify_start(args.target)
    gone = client.target_gone(start)
    _emit(
        args,
        lambda: render.verify_text(items, full=args.full, target_gone=gone),
        lambda: render.verify_json(args.target, items, target_gone=gone),
    )
    bad = any(i.state in (VerifyState.CHANGED, VerifyState.MISSING) for i in items)
    return 1 if bad or gone else 0


def _sync(args: argparse.Namespace, client: Client) -> int:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_client import spool

    report = spool.deliver(client, every_target=args.all)
    left = len(spool.pending())
    if args.json:
        print(
            _render().dumps(
                {
                    "delivered": report.delivered,
                    "waiting": [{"run_id": r, "reason": why} for r, why in report.waiting],
                    "failed": [{"run_id": r, "reason": why} for r, why in report.failed],
                    "pending": left,
                }
            )
        )
    else:
        lines = spool.summary(report) or ["nothing to deliver"]
        lines.append(f"{left} spooled run{'s' if left != 1 else ''} left in {spool.spool_dir()}")
        print("\n".join(lines))
    return 1 if report.failed else 0


def _deliver_spooled(args: argparse.Namespace, client: Client) -> None:
    """Before a command's answer: hand the daemon the runs spooled while it was away."""
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_client import spool

    if args.handler is _sync or not spool.has_pending():
        return
    try:
        lines = spool.summary(spool.deliver(client))
    except (LineageError, OSError):
        return  # the command itself says what is wrong with the daemon
    for line in lines:
        print(f"lineage: {line}", file=sys.stderr)


def _ui(args: argparse.Namespace, client: Client) -> int:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_client.ui import server

    if args.listen:
        host, port = server.parse_listen(args.listen)
    else:
        host, port = "127.0.0.1", args.port
    token = server.read_token(args.listen_token_file) if args.listen_token_file else ""
    return server.serve(client, host, port, token=token, open_browser=args.open)


def _export(args: argparse.Namespace, client: Client) -> int:
    if not args.openlineage:
        raise InvalidArgument("say what to export: lineage export --openlineage")
    out = sys.stdout
    for line in client.export_openlineage(args.runs, since=args.since):
        out.write(line + "\n")
    out.flush()
    return 0


def _pin(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    report = client.pin(args.target, note=args.note)
    return _emit(
        args, lambda: render.pin_text(report, full=args.full), lambda: render.pin_json(report)
    )


def _gc(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    report = client.gc(dry_run=args.dry_run)
    return _emit(args, lambda: render.gc_text(report), lambda: render.gc_json(report))


def _restore(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    restored = client.restore(args.target, to=args.to, force=args.force)
    return _emit(
        args,
        lambda: render.restored_text(restored, full=args.full),
        lambda: render.restored_json(restored),
    )


def _checkout(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    done = client.checkout(args.run, args.to)
    _emit(args, lambda: render.checkout_text(done), lambda: render.checkout_json(done))
    return 1 if done.missing else 0


def _reproduce(args: argparse.Namespace, client: Client) -> int:
    render = _render()
    # With --json the re-run command's own output goes to stderr: stdout is the verdict.
    result = client.reproduce(args.run, in_dir=args.in_dir, output=2 if args.json else None)
    _emit(
        args,
        lambda: render.reproduction_text(result, full=args.full),
        lambda: render.reproduction_json(result),
    )
    return result.exit_status


# --- parser ------------------------------------------------------------------------------


def _common() -> argparse.ArgumentParser:
    """Options accepted both before and after the command (SUPPRESS keeps either one)."""
    common = argparse.ArgumentParser(add_help=False)
    group = common.add_argument_group("common options")
    group.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="print JSON (stable keys, see docs/json.md)",
    )
    group.add_argument(
        "--full",
        action="store_true",
        default=argparse.SUPPRESS,
        help="full 64-hex digests and run ids",
    )
    group.add_argument(
        "--socket",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="daemon socket (default: as lineaged picks it)",
    )
    group.add_argument(
        "--target",
        dest="tcp_target",
        metavar="HOST:PORT",
        default=argparse.SUPPRESS,
        help="reach the daemon over TCP instead",
    )
    group.add_argument(
        "--token-file",
        metavar="FILE",
        default=argparse.SUPPRESS,
        help="bearer token for --target (or $LINEAGE_TOKEN)",
    )
    group.add_argument(
        "--tls",
        nargs="?",
        const=True,
        metavar="CA_FILE",
        default=argparse.SUPPRESS,
        help="use TLS with --target (optionally a root certificate)",
    )
    return common


def _lineage_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "target", help="PATH, PATH@TIME, a digest or prefix (>= 8 hex), a run id, or version:N"
    )
    parser.add_argument(
        "--depth",
        type=int,
        default=0,
        metavar="N",
        help="hops to follow (default: the server's, 100)",
    )
    parser.add_argument(
        "--max-nodes",
        type=int,
        default=0,
        metavar="N",
        help="node cap (default: the server's, 1000)",
    )
    parser.add_argument(
        "--format", choices=("tree", "dot", "mermaid"), default="tree", help="human output format"
    )


def _add_run_command(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Seam for ``lineage run``: registered only when ``lineage_client.runcmd`` is installed.

    ``runcmd.main_run(args, connect) -> int`` receives ``args.name``, ``args.param``
    (["k=v", ...]) and ``args.command`` (the argv after ``--``, without the ``--``), and
    ``connect()``, which opens the client when the command needs it: ``lineage run``
    starts its command before it imports grpc.
    """
    if "lineage_client.runcmd" not in sys.modules and (
        importlib.util.find_spec("lineage_client.runcmd") is None
    ):
        return
    parser = subparsers.add_parser(
        "run", parents=[common], help="run a command and record its lineage"
    )
    parser.add_argument("--name", help="run name (default: the command's name)")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a run parameter (repeatable)",
    )
    parser.add_argument(
        "--require-daemon",
        action="store_true",
        help="refuse to start the command when no daemon listens (default: run it and "
        "spool its capture until one does)",
    )
    parser.add_argument(
        "--capture",
        choices=("auto", "interposer", "strace", "audit-hook", "none"),
        default=None,
        help="how file accesses are traced (default: $LINEAGE_CAPTURE, else auto: the "
        "LD_PRELOAD interposer, else strace; see docs/capture.md)",
    )
    parser.add_argument(
        "--require-complete",
        action="store_true",
        default=None,
        help="refuse to start (exit 2) when the capture would be partial "
        "(default: $LINEAGE_REQUIRE_COMPLETE=1)",
    )
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- CMD [ARGS...]")

    def run(args: argparse.Namespace) -> int:
        runcmd = importlib.import_module("lineage_client.runcmd")  # imported once it runs
        if args.command[:1] == ["--"]:
            args.command = args.command[1:]
        result: int = runcmd.main_run(args, lambda: _client(args))
        return result

    parser.set_defaults(run_handler=run)


# Options of the common parser that take a value (``--tls`` takes one only as --tls=FILE or
# when the next word is no command): what _command_word skips to find the command.
_VALUE_OPTIONS = frozenset(("--socket", "--target", "--token-file"))


def _command_word(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (its first word that is no option or option value)."""
    words = iter(argv)
    for word in words:
        if word == "--":
            return None
        if word in _VALUE_OPTIONS:
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def build_parser(*, only_run: bool = False) -> argparse.ArgumentParser:
    """The ``lineage`` argument parser (``only_run``: with the ``run`` command alone, which
    is all ``lineage run`` needs; the others' choices need lineage_core.models)."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="lineage",
        parents=[common],
        description="Ask lineaged which data, code and environment produced a file.",
        epilog="exit codes: 0 ok, 1 error (verify: an input changed or is missing), 2 usage or"
        " invalid argument, 3 not found, 4 daemon not running, 5 not allowed",
    )
    sub = parser.add_subparsers(dest="command_name", metavar="COMMAND", required=True)
    if only_run:
        _add_run_command(sub, common)
        return parser
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_core.models import RunStatus

    sub.add_parser(
        "status", parents=[common], help="daemon version, roots, counts, scan state"
    ).set_defaults(handler=_status)

    log = sub.add_parser("log", parents=[common], help="every version a path has had, newest first")
    log.add_argument("path")
    log.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N versions (default 20)"
    )
    log.add_argument("--all", action="store_true", help="every version")
    log.set_defaults(handler=_log)

    where = sub.add_parser("where", parents=[common], help="every path that held a digest")
    where.add_argument("digest", help="a digest or a prefix of at least 8 hex characters")
    where.set_defaults(handler=_where)

    trace = sub.add_parser("trace", parents=[common], help="upstream: what made TARGET")
    _lineage_options(trace)
    trace.set_defaults(handler=_lineage("upstream"))

    impact = sub.add_parser("impact", parents=[common], help="downstream: what used TARGET")
    _lineage_options(impact)
    impact.set_defaults(handler=_lineage("downstream"))

    runs = sub.add_parser("runs", parents=[common], help="recent runs, newest first")
    runs.add_argument("--name", help="only runs with this name")
    runs.add_argument(
        "--status", choices=[s.value for s in RunStatus], help="only runs in this state"
    )
    runs.add_argument("--since", metavar="TIME", help="started at or after (2024-05-01, 2h, ...)")
    runs.add_argument("--until", metavar="TIME", help="started before")
    runs.add_argument(
        "--limit", type=int, default=20, metavar="N", help="at most N runs (default 20)"
    )
    runs.set_defaults(handler=_runs)

    show = sub.add_parser(
        "show", parents=[common], help="one run: command, code, env, inputs, outputs"
    )
    show.add_argument("run", help="a run id or a unique prefix (>= 8 characters)")
    show.add_argument("--diff", action="store_true", help="print the recorded git diff")
    show.set_defaults(handler=_show)

    verify = sub.add_parser(
        "verify", parents=[common], help="do TARGET's recorded inputs still hold the same bytes?"
    )
    verify.add_argument(
        "target", help="PATH, PATH@TIME, a digest or prefix, a run id, or version:N"
    )
    verify.set_defaults(handler=_verify)

    ui = sub.add_parser(
        "ui", parents=[common], help="a local web view: graphs, runs, histories (read-only)"
    )
    ui.add_argument(
        "--port",
        type=int,
        default=8765,
        metavar="N",
        help="port on 127.0.0.1 (default 8765; 0: any)",
    )
    ui.add_argument(
        "--listen",
        metavar="HOST:PORT",
        help="listen elsewhere; an address that is not loopback needs --listen-token-file",
    )
    ui.add_argument(
        "--listen-token-file",
        metavar="FILE",
        help="token browsers must present (the daemon's --token-file rules)",
    )
    ui.add_argument("--open", action="store_true", help="open the page in a browser")
    ui.set_defaults(handler=_ui)
    export = sub.add_parser(
        "export", parents=[common], help="recorded runs in another format (a backfill)"
    )
    export.add_argument(
        "--openlineage",
        action="store_true",
        help="OpenLineage RunEvents (spec 2-0-2) as NDJSON, as the daemon sends them",
    )
    export.add_argument("--since", metavar="TIME", help="runs started at or after TIME")
    export.add_argument("runs", nargs="*", metavar="RUN", help="run ids or unique prefixes")
    export.set_defaults(handler=_export)
    sync = sub.add_parser(
        "sync", parents=[common], help="deliver the runs spooled while no daemon was reachable"
    )
    sync.add_argument(
        "--all", action="store_true", help="also runs spooled for another daemon's socket"
    )
    sync.set_defaults(handler=_sync)
    pin = sub.add_parser(
        "pin", parents=[common], help="keep a version's bytes and everything upstream of it"
    )
    pin.add_argument("target", help="PATH (its current version), a digest, or a run id")
    pin.add_argument("--note", default="", help="why it is pinned")
    pin.set_defaults(handler=_pin)

    gc = sub.add_parser("gc", parents=[common], help="free kept bytes the policy no longer wants")
    gc.add_argument("--dry-run", action="store_true", help="only say what would be freed")
    gc.set_defaults(handler=_gc)

    restore = sub.add_parser(
        "restore", parents=[common], help="write a recorded version's bytes back"
    )
    restore.add_argument("target", help="PATH (its newest version), PATH@TIME or PATH@DIGEST")
    restore.add_argument("--to", metavar="DEST", help="write there instead (file or folder)")
    restore.add_argument(
        "--force", action="store_true", help="overwrite content that is no recorded version"
    )
    restore.set_defaults(handler=_restore)

    checkout = sub.add_parser(
        "checkout", parents=[common], help="materialise a run's inputs and code in a folder"
    )
    checkout.add_argument("run", help="a run id or a unique prefix")
    checkout.add_argument("--to", required=True, metavar="DIR", help="a new or empty folder")
    checkout.set_defaults(handler=_checkout)

    reproduce = sub.add_parser(
        "reproduce",
        parents=[common],
        help="re-run a run and compare its outputs bit for bit",
        epilog="exit status: 0 identical, 1 differs, 3 cannot (something is missing)",
    )
    reproduce.add_argument("run", help="a run id or a unique prefix")
    reproduce.add_argument(
        "--in", dest="in_dir", metavar="DIR", help="check out there (default: a new temp folder)"
    )
    reproduce.set_defaults(handler=_reproduce)

    _add_run_command(sub, common)
    return parser


def _client(args: argparse.Namespace) -> Client:
    # (a) `lineage run` start-up: cli.py loads before the exec; only this command needs it
    from lineage_client.client import Client

    target = getattr(args, "tcp_target", None)
    if target:
        token_file = getattr(args, "token_file", "")
        token = os.environ.get("LINEAGE_TOKEN", "")
        if token_file:
            with open(token_file, encoding="utf-8") as handle:
                token = handle.read().strip()
        return Client(target=target, token=token or None, tls=getattr(args, "tls", False))
    return Client(socket=getattr(args, "socket", None))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``lineage`` console script; returns the exit code."""
    words = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(only_run=_command_word(words) == "run")
    args = parser.parse_args(words)
    for name in ("json", "full"):
        setattr(args, name, getattr(args, name, False))
    try:
        run_handler: Callable[[argparse.Namespace], int] | None = getattr(args, "run_handler", None)
        if run_handler is not None:
            return run_handler(args)  # connects (and closes) on its own, when it needs to
        with _client(args) as client:
            handler: Handler = args.handler
            _deliver_spooled(args, client)
            return handler(args, client)
    except LineageError as exc:
        print(f"Error: {terminal_safe(exc.message)}", file=sys.stderr)
        return exc.exit_code
    except UnicodeError as exc:  # a name that is not UTF-8 cannot go over the wire
        print(f"Error: not valid UTF-8 text: {escape(str(exc))}", file=sys.stderr)
        return InvalidArgument.exit_code
    except PermissionError as exc:
        print(f"Error: {PermissionDenied(str(exc)).message}", file=sys.stderr)
        return PermissionDenied.exit_code
    except OSError as exc:
        print(f"Error: {terminal_safe(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
