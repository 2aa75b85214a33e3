"""Generate the committed gRPC stubs: ``python -m lineaged._protogen SRC.proto OUT_DIR``.

The one command behind ``make proto`` and ``make proto-check``. It runs ``grpc_tools.protoc``
with the Python, gRPC and mypy-protobuf plugins, then rewrites the stubs' imports of each other
so they load as ``lineage_core._proto.lineage.v1.lineage_pb2`` without touching ``sys.path``.
"""

from __future__ import annotations

import re
import shutil
import sys
import tempfile
from importlib import resources
from pathlib import Path

__all__ = ["generate", "main"]

PACKAGE = "lineage_core._proto"
_GENERATED_SUFFIXES = ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py", "_pb2_grpc.pyi")


def _plugin(name: str) -> str:
    """The plugin executable beside this interpreter (a venv's bin), else on PATH."""
    beside = Path(sys.executable).parent / name
    if beside.exists():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"{name} not found: install the dev extras (pip install -e '.[dev]')")
    return found


def _rewrite_imports(text: str, proto_packages: set[str]) -> str:
    """Point ``from lineage.v1 import x_pb2`` at ``lineage_core._proto.lineage.v1``."""
    for package in sorted(proto_packages):
        pattern = re.compile(rf"^(\s*)(from|import) ({re.escape(package)})\b", re.MULTILINE)
        text = pattern.sub(rf"\1\2 {PACKAGE}.\3", text)
    return text


def generate(source: Path, out_dir: Path) -> list[Path]:
    """Compile ``source`` into ``out_dir`` (package ``__init__.py`` files included)."""
    # A dev dependency: only the generator needs it.
    from grpc_tools import protoc  # type: ignore[import-untyped]

    source = source.resolve()
    # proto/lineage/v1/lineage.proto: the import root is two folders above the file's folder,
    # so the file's name inside descriptors (and reflection) is lineage/v1/lineage.proto.
    root = source.parents[2]
    relative = source.relative_to(root)
    well_known = resources.files("grpc_tools") / "_proto"
    with tempfile.TemporaryDirectory() as scratch:
        args = [
            "grpc_tools.protoc",
            f"--proto_path={root}",
            f"--proto_path={well_known}",
            f"--plugin=protoc-gen-mypy={_plugin('protoc-gen-mypy')}",
            f"--plugin=protoc-gen-mypy_grpc={_plugin('protoc-gen-mypy_grpc')}",
            f"--python_out={scratch}",
            f"--grpc_python_out={scratch}",
            f"--mypy_out={scratch}",
            f"--mypy_grpc_out={scratch}",
            str(relative),
        ]
        if protoc.main(args) != 0:
            raise SystemExit(f"protoc failed on {source}")
        produced = sorted(
            path
            for path in Path(scratch).rglob("*")
            if path.is_file() and path.name.endswith(_GENERATED_SUFFIXES)
        )
        proto_packages = {".".join(relative.parent.parts[:1])}
        written: list[Path] = []
        for path in produced:
            target = out_dir / path.relative_to(scratch)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_rewrite_imports(path.read_text(), proto_packages))
            written.append(target)
    # Every folder from out_dir down to the stubs is a package, so the imports resolve.
    for path in written:
        folder = path.parent
        while True:
            init = folder / "__init__.py"
            if not init.exists():
                init.write_text("")
            if folder == out_dir:
                break
            folder = folder.parent
    return written


def main(argv: list[str] | None = None) -> int:
    """Entry point: ``python -m lineaged._protogen SRC.proto OUT_DIR``."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m lineaged._protogen SRC.proto OUT_DIR", file=sys.stderr)
        return 2
    for path in generate(Path(args[0]), Path(args[1])):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
