"""The git state of a run's working tree: commit, branch, remote, and the uncommitted diff.

Only local, read-only git commands, with ``GIT_OPTIONAL_LOCKS=0`` so a run never fights
an editor or a concurrent ``git`` for the index lock, and no prompts or network.
"""

from __future__ import annotations

import os
import subprocess
from urllib.parse import urlsplit, urlunsplit

import blake3
from lineage_core.models import CodeState
from lineage_core.redact import Redactor

__all__ = ["DEFAULT_DIFF_CAP", "git_state", "strip_credentials"]

DEFAULT_DIFF_CAP = 1 << 20
_TIMEOUT = 60.0
# Flags that make `git diff` output the same bytes whatever the user's configuration.
_DIFF_OPTIONS = (
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--binary",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)
_SSH_SCHEMES = {"ssh", "git+ssh", "ssh+git"}


class _GitUnavailable(Exception):
    """git is missing or failed in a way that means: no git state."""


def _environment() -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        GIT_OPTIONAL_LOCKS="0",
        GIT_TERMINAL_PROMPT="0",
        GIT_PAGER="cat",
        LC_ALL="C",
    )
    return env


def _git(top: str, *args: str, check: bool = True) -> bytes:
    try:
        done = subprocess.run(
            ["git", "-C", top, *args],
            capture_output=True,
            env=_environment(),
            timeout=_TIMEOUT,
            check=False,
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _GitUnavailable(str(exc)) from exc
    if check and done.returncode != 0:
        raise _GitUnavailable(done.stderr.decode(errors="replace").strip())
    return done.stdout if done.returncode == 0 else b""


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape").strip()


def strip_credentials(url: str) -> str:
    """Drop user and password from a remote URL (``https://user:tok@host/x`` -> ``https://host/x``).

    For ssh URLs only a password is dropped: the user there names an account, not a secret.
    scp-like remotes (``git@host:path``) carry no secret and are returned as they are.
    """
    parts = urlsplit(url)
    if not parts.scheme or "@" not in parts.netloc:
        return url
    userinfo, _, hostport = parts.netloc.rpartition("@")
    if parts.scheme in _SSH_SCHEMES:
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}@{hostport}" if user else hostport
    else:
        netloc = hostport
    return urlunsplit(parts._replace(netloc=netloc))


def _remote_url(top: str) -> str:
    names = _text(_git(top, "remote", check=False)).splitlines()
    if not names:
        return ""
    name = "origin" if "origin" in names else names[0]
    # Userinfo is dropped; a token in the query (?private_token=...) is redacted.
    return Redactor().text(
        strip_credentials(_text(_git(top, "remote", "get-url", name, check=False)))
    )


def _diff(top: str, base: str, cap: int) -> tuple[bytes, int, str]:
    """Stream ``git diff <base>``: (first ``cap`` bytes, full size, BLAKE3 of the full diff)."""
    command = ["git", "-C", top, "diff", *_DIFF_OPTIONS, base, "--"]
    hasher = blake3.blake3()
    kept = bytearray()
    size = 0
    try:
        with subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            env=_environment(),
        ) as proc:
            assert proc.stdout is not None
            while chunk := proc.stdout.read(1 << 16):
                hasher.update(chunk)
                size += len(chunk)
                if len(kept) < cap:
                    kept += chunk[: cap - len(kept)]
            if proc.wait(timeout=_TIMEOUT) != 0:
                raise _GitUnavailable(f"git diff exited with {proc.returncode}")
    except (OSError, subprocess.SubprocessError) as exc:
        raise _GitUnavailable(str(exc)) from exc
    return bytes(kept), size, hasher.hexdigest()


def _split_nul(data: bytes) -> tuple[str, ...]:
    return tuple(part.decode("utf-8", "surrogateescape") for part in data.split(b"\0") if part)


def git_state(cwd: str, *, diff_cap: int = DEFAULT_DIFF_CAP) -> CodeState | None:
    """The git state of the work tree holding ``cwd``; None outside a work tree or without git.

    ``diff`` is ``git diff HEAD`` (staged and unstaged changes to tracked files, binary-safe),
    cut at ``diff_cap`` bytes with ``diff_truncated`` set; ``diff_size`` and ``diff_digest``
    describe the whole diff. In a repository without commits the diff is against the empty
    tree. ``dirty`` is true when there is a diff or an untracked file.
    """
    try:
        if _text(_git(cwd, "rev-parse", "--is-inside-work-tree", check=False)) != "true":
            return None
        top = _text(_git(cwd, "rev-parse", "--show-toplevel"))
        commit = _text(_git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", check=False))
        branch = _text(_git(top, "symbolic-ref", "--quiet", "--short", "HEAD", check=False))
        base = commit or _empty_tree(top)
        diff, diff_size, diff_digest = _diff(top, base, max(0, diff_cap))
        untracked = _split_nul(
            _git(top, "ls-files", "--others", "--exclude-standard", "-z", "--full-name")
        )
        remote = _remote_url(top)
    except _GitUnavailable:
        return None
    return CodeState(
        commit=commit,
        branch=branch,
        remote=remote,
        dirty=diff_size > 0 or bool(untracked),
        diff=diff,
        diff_digest=diff_digest,
        diff_size=diff_size,
        diff_truncated=diff_size > len(diff),
        untracked=untracked,
    )


def _empty_tree(top: str) -> str:
    # Asked of git rather than hard-coded: SHA-256 repositories have another empty tree id.
    try:
        done = subprocess.run(
            ["git", "-C", top, "hash-object", "-t", "tree", "--stdin"],
            input=b"",
            capture_output=True,
            env=_environment(),
            timeout=_TIMEOUT,
            check=True,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise _GitUnavailable(str(exc)) from exc
    return _text(done.stdout)
