"""Secrets are never stored: the rules that redact them from what a run records.

A run records its command line, its parameters, its git remote and chosen environment
variables. Each of those can carry a password or a token; this module replaces such values
with a marker before they are stored. The same rules run twice: in the client before it sends
(the value never leaves the user's process) and in the daemon when a run arrives (the daemon
trusts no client). docs/security.md explains the rules and how to extend them.

The client writes ``<redacted>``. The daemon writes ``<redacted:K>`` where K is 16 hex
characters of a *keyed* BLAKE3 of the value, under a secret key of the store
(:func:`load_or_create_key`): two runs that used the same secret show the same K, and someone
who reads the store cannot test guesses without the key (no dictionary oracle).
"""

from __future__ import annotations

import fnmatch
import os
import re
import secrets
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import blake3

from lineage_core.errors import ConfigError
from lineage_core.models import RunStart

__all__ = [
    "KEY_FILE",
    "REDACTED",
    "SECRET_VARIABLE_MARKERS",
    "Redactor",
    "is_marker",
    "load_or_create_key",
    "secret_name",
    "secret_variable",
]

REDACTED = "<redacted>"
KEY_FILE = "redaction.key"
KEY_BYTES = 32
_MARKER = re.compile(r"<redacted(?::[0-9a-f]{16})?>")

# A name is split into lower-case words ("--api-key", "apiKey", "API_KEY" -> api, key).
# A word that CONTAINS one of these is secret ("private_token", "authtoken", "db_password"):
_SECRET_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "apikey",
    "accesskey",
    "privatekey",
    "jwt",
)
# ... and a word EQUAL to one of these ("MYSQL_PWD", "--key", "sig", "auth"):
_SECRET_WORDS = frozenset(
    {
        "pwd",
        "pw",
        "pass",
        "key",
        "sig",
        "signature",
        "auth",
        "authorization",
        "cookie",
        "session",
        "private",
        "bearer",
    }
)
# An option or parameter whose LAST word is one of these names where a secret is, not the
# secret: ``--token-file PATH``, ``--password-env NAME``, ``key_id=...``.
_REFERENCE_WORDS = frozenset(
    {
        "file",
        "path",
        "dir",
        "fd",
        "env",
        "var",
        "id",
        "name",
        "type",
        "length",
        "len",
        "size",
        "url",
        "uri",
        "host",
        "user",
        "username",
        "helper",
        "cmd",
        "command",
        "column",
        "col",
        "field",
        "format",
        "prefix",
        "bits",
        "algorithm",
    }
)
# Variables named so hold no secret, although a word says otherwise (PWD is the directory).
_NOT_SECRET_VARIABLES = frozenset({"PWD", "OLDPWD"})
# Substrings of variable names that mean a secret (the client's historical rule, kept).
SECRET_VARIABLE_MARKERS = (
    "TOKEN",
    "SECRET",
    "KEY",
    "PASSWORD",
    "PASSWD",
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "SESSION",
    "COOKIE",
    "JWT",
)

_CAMEL = re.compile(r"([a-z0-9])([A-Z])")
_WORD_SPLIT = re.compile(r"[^0-9a-z]+")

# scheme://userinfo@ — the userinfo is what is redacted (ssh: only its password).
_URL_USERINFO = re.compile(r"\b([A-Za-z][A-Za-z0-9+.\-]*)://([^/@\s?#]+)@")
_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git", "sftp"})
# name=value in a query string, a connection string or an assignment word (MYSQL_PWD=x).
_PAIR = re.compile(r"(^|[?&;\s])([A-Za-z_][A-Za-z0-9_.\-]*)=([^&#;\s]*)")
# "Authorization: Bearer x", "Private-Token: x" (curl -H, wget --header).
_HEADER = re.compile(r"^\s*([A-Za-z][A-Za-z0-9\-]*)\s*:\s*(\S.*)$", re.DOTALL)
# Values that are secrets whatever they are called: well-known token shapes.
_TOKEN_SHAPES = (
    r"eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*",  # JWT
    r"\bgh[pousr]_[A-Za-z0-9]{20,}",  # GitHub
    r"\bgithub_pat_[A-Za-z0-9_]{20,}",
    r"\bglpat-[A-Za-z0-9_\-]{20,}",  # GitLab
    r"\bxox[abposr]-[A-Za-z0-9\-]{10,}",  # Slack
    r"\bAKIA[0-9A-Z]{16}\b",  # AWS access key id
    r"\bhf_[A-Za-z0-9]{30,}",  # Hugging Face
    r"\bsk-(?:proj-)?[A-Za-z0-9_]{20,}",  # OpenAI-style keys (not "sk-learn-...")
    r"\b(?i:bearer)\s+[A-Za-z0-9._~+/=\-]{8,}",
    r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)",
)
# Programs whose short options carry a secret: mysql -pSECRET (attached only: "-p x" prompts),
# curl -u user:pass.
_ATTACHED_SHORT = {"mysql": "-p", "mysqldump": "-p", "mysqladmin": "-p", "mariadb": "-p"}
_USER_PASS_OPTIONS = {"curl": ("-u", "--user", "--proxy-user", "-U")}


def _words(name: str) -> list[str]:
    return [w for w in _WORD_SPLIT.split(_CAMEL.sub(r"\1_\2", name).lower()) if w]


# "key" after one of these is a data key, not a secret: --sort-key, --label-key, join_key.
_DATA_KEY_WORDS = frozenset(
    {
        "sort",
        "primary",
        "partition",
        "group",
        "join",
        "merge",
        "foreign",
        "cache",
        "dict",
        "map",
        "label",
        "target",
        "hash",
        "shard",
        "index",
        "lookup",
        "row",
        "unique",
        "dedup",
    }
)


def _secret_words(words: Sequence[str]) -> bool:
    for index, word in enumerate(words):
        if word == "key" and index and words[index - 1] in _DATA_KEY_WORDS:
            continue
        if word in _SECRET_WORDS or any(part in word for part in _SECRET_PARTS):
            return True
    return False


def secret_name(name: str) -> bool:
    """Whether an option, parameter or query name (``--api-key``, ``private_token``) names a
    secret value; a name for where a secret is (``--token-file``) does not."""
    words = _words(name.lstrip("-"))
    if not words or words[0] == "no" or words[-1] in _REFERENCE_WORDS:
        return False
    return _secret_words(words)


def secret_variable(name: str) -> bool:
    """Whether an environment variable's name says it holds a secret (``*_TOKEN``,
    ``MYSQL_PWD``, ``CI_JOB_JWT``); stricter than :func:`secret_name` (no reference words)."""
    upper = name.upper()
    if upper in _NOT_SECRET_VARIABLES:
        return False
    return any(m in upper for m in SECRET_VARIABLE_MARKERS) or _secret_words(_words(name))


def is_marker(value: str) -> bool:
    """Whether ``value`` is a redaction marker already (redacting twice changes nothing)."""
    return _MARKER.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class Redactor:
    """Redaction with optional extra rules and, in the daemon, the store's key.

    ``names``: extra fnmatch patterns (case-insensitive, "-" and "_" alike) of option,
    parameter, query and variable names whose values are secret. ``values``: extra regular expressions; every match
    in any recorded string is redacted. ``key``: 32 bytes; markers then carry a keyed digest.
    """

    key: bytes | None = None
    names: tuple[str, ...] = ()
    values: tuple[str, ...] = ()
    _values: re.Pattern[str] = field(init=False, repr=False, compare=False)
    _names: re.Pattern[str] | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.key is not None and len(self.key) != KEY_BYTES:
            raise ValueError(f"a redaction key is {KEY_BYTES} bytes")
        object.__setattr__(
            self,
            "_values",
            re.compile("|".join(f"(?:{p})" for p in (*_TOKEN_SHAPES, *self.values))),
        )
        names = (
            re.compile(
                "|".join(f"(?:{fnmatch.translate(p.replace('-', '_'))})" for p in self.names),
                re.IGNORECASE,
            )
            if self.names
            else None
        )
        object.__setattr__(self, "_names", names)

    # -- the marker

    def mark(self, value: str) -> str:
        """The marker that replaces ``value``."""
        if is_marker(value):
            return value
        if self.key is None:
            return REDACTED
        data = value.encode("utf-8", "surrogateescape")
        return f"<redacted:{blake3.blake3(data, key=self.key).hexdigest(length=8)}>"

    # -- names

    def _extra_name(self, name: str) -> bool:
        if self._names is None:
            return False
        return self._names.fullmatch(name.lstrip("-").replace("-", "_")) is not None

    def is_secret_name(self, name: str) -> bool:
        """:func:`secret_name` or one of the extra ``names``."""
        return secret_name(name) or self._extra_name(name)

    def is_secret_variable(self, name: str) -> bool:
        """:func:`secret_variable` or one of the extra ``names``."""
        return secret_variable(name) or self._extra_name(name)

    # -- values

    def text(self, value: str) -> str:
        """Redact the secrets found inside any string: URL userinfo, secret query or
        ``name=value`` pairs, headers naming a secret, well-known token shapes, extra values."""
        if not value:
            return value
        out = value
        if "://" in out and "@" in out:
            out = _URL_USERINFO.sub(self._userinfo, out)
        if "=" in out:
            out = _PAIR.sub(self._pair, out)
        if ":" in out:
            header = _HEADER.match(out)
            if header and "://" not in out and self.is_secret_name(header.group(1)):
                out = f"{header.group(1)}: {self.mark(header.group(2))}"
        return self._values.sub(lambda m: self.mark(m.group(0)), out)

    def _userinfo(self, match: re.Match[str]) -> str:
        scheme, userinfo = match.group(1), match.group(2)
        if is_marker(userinfo):
            return match.group(0)
        if scheme.lower() in _SSH_SCHEMES:
            user, colon, password = userinfo.partition(":")
            if not colon or is_marker(password):
                return match.group(0)
            return f"{scheme}://{user}:{self.mark(password)}@"
        user, colon, password = userinfo.partition(":")
        if colon and is_marker(password):
            return match.group(0)
        if colon and user:  # postgres://app:PASSWORD@db: the account name is no secret
            return f"{scheme}://{user}:{self.mark(password)}@"
        # https://TOKEN@host: a lone user part is often the token itself
        return f"{scheme}://{self.mark(userinfo)}@"

    def _pair(self, match: re.Match[str]) -> str:
        lead, name, value = match.groups()
        if not value or is_marker(value) or not self.is_secret_name(name):
            return match.group(0)
        return f"{lead}{name}={self.mark(value)}"

    # -- what a run records

    def argv(self, argv: Sequence[str]) -> tuple[str, ...]:
        """A command line with secret option values redacted (``--password=x``,
        ``--token x``), and every argument's text redacted as :meth:`text` does."""
        program = os.path.basename(argv[0]) if argv else ""
        attached = _ATTACHED_SHORT.get(program)
        user_pass = _USER_PASS_OPTIONS.get(program, ())
        out: list[str] = []
        pending: Callable[[str], str] | None = None  # how to redact the next argument
        for arg in argv:
            if pending is not None:
                out.append(pending(arg))
                pending = None
                continue
            if arg.startswith("--") and len(arg) > 2:
                name, eq, value = arg.partition("=")
                if self.is_secret_name(name):
                    if eq:
                        out.append(f"{name}={self.mark(value)}" if value else arg)
                    else:
                        out.append(arg)
                        pending = self._option_value
                    continue
                if name in user_pass:
                    if eq:
                        out.append(f"{name}={self._user_pass(value)}")
                    else:
                        out.append(arg)
                        pending = self._user_pass
                    continue
            elif attached and arg.startswith(attached) and len(arg) > len(attached):
                out.append(attached + self.mark(arg[len(attached) :]))
                continue
            elif arg in user_pass:
                out.append(arg)
                pending = self._user_pass
                continue
            out.append(self.text(arg))
        return tuple(out)

    def _option_value(self, value: str) -> str:
        # "--token --verbose": the option had no value; the next word is another option.
        if value.startswith("-") and len(value) > 1:
            return self.text(value)
        return self.mark(value) if value else value

    def _user_pass(self, value: str) -> str:
        user, colon, password = value.partition(":")
        if not colon or not password or is_marker(password):
            return value
        return f"{user}:{self.mark(password)}"

    def variables(self, variables: Mapping[str, str], *, drop_secret: bool) -> dict[str, str]:
        """Environment variables: a secret name drops the variable (``drop_secret``, as the
        client does) or redacts its value (the daemon); any value is redacted as :meth:`text`."""
        out: dict[str, str] = {}
        for name, value in variables.items():
            if self.is_secret_variable(name):
                if not drop_secret:
                    out[name] = self.mark(value)
                continue
            out[name] = self.text(value)
        return out

    def params(self, params: Mapping[str, str]) -> dict[str, str]:
        """Run parameters: values of secret-named keys, and secrets inside any value."""
        return {
            key: self.mark(value) if value and self.is_secret_name(key) else self.text(value)
            for key, value in params.items()
        }

    def run_start(self, start: RunStart) -> RunStart:
        """A run as it may be stored: argv, params, git remote and variables redacted."""
        code = start.code
        if code is not None and code.remote:
            remote = self.text(code.remote)
            if remote != code.remote:
                code = replace(code, remote=remote)
        env = start.env
        if env is not None and env.variables:
            variables = self.variables(env.variables, drop_secret=False)
            if variables != dict(env.variables):
                env = replace(env, variables=variables)
        return replace(
            start, argv=self.argv(start.argv), params=self.params(start.params), code=code, env=env
        )

    def texts(self, values: Iterable[str]) -> tuple[str, ...]:
        """:meth:`text` of each value."""
        return tuple(self.text(value) for value in values)


def load_or_create_key(state_dir: Path) -> bytes:
    """The store's redaction key: ``state_dir/redaction.key`` (0600), made on first use.

    It stays beside the store and never leaves the daemon: whoever holds it could test
    guesses against the keyed digests in the markers.
    """
    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        pass
    else:
        try:
            try:
                os.write(fd, secrets.token_bytes(KEY_BYTES))
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError as exc:  # a full disk: no half-written key is left to refuse later
            path.unlink(missing_ok=True)
            raise ConfigError(f"cannot write the redaction key {path}: {exc.strerror}") from None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        raise ConfigError(f"cannot read the redaction key {path}: {exc.strerror}") from None
    try:
        key = os.read(fd, KEY_BYTES + 1)
    finally:
        os.close(fd)
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path} is not a {KEY_BYTES}-byte redaction key; move it away")
    return key
