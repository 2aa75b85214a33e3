"""Every limit and default of the API, in one place.

The request gate (``lineage_core.gate``) holds each request to these once, at the gRPC edge;
the engine and the store trust what it lets through. Clients use the same numbers to batch
their calls and to cap what they ask for. docs/grpc-api.md lists them for people.
"""

from __future__ import annotations

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_MAX_NODES",
    "DEFAULT_PAGE_SIZE",
    "MAX_ACCESSES",
    "MAX_ANSWER_BYTES",
    "MAX_CAPTURE_METHOD",
    "MAX_DEPTH",
    "MAX_DIFF_BYTES",
    "MAX_NAME_BYTES",
    "MAX_NODES",
    "MAX_NS",
    "MAX_PAGE_SIZE",
    "MAX_PATH_BYTES",
    "MAX_PID",
    "MAX_PIN_NOTE",
    "MAX_REPEATED",
    "MAX_RUN_ID",
    "MAX_RUN_NAME",
    "MAX_TEXT_BYTES",
    "MAX_WARNINGS",
    "MAX_WARNING_CHARS",
    "MIN_DIGEST_PREFIX",
    "MIN_NS",
]

# Listings (history, runs, versions of a digest): 0 asks for the default.
DEFAULT_PAGE_SIZE = 100
MAX_PAGE_SIZE = 1000

# Lineage walks: 0 asks for the default. Depth counts run levels.
DEFAULT_MAX_DEPTH = 100
MAX_DEPTH = 10_000
DEFAULT_MAX_NODES = 1000
MAX_NODES = 10_000  # the largest graph one answer carries

# Runs.
MAX_RUN_NAME = 256  # characters, without NUL
MAX_RUN_ID = 64  # characters of a run id (or a prefix of one) in a request
MAX_ACCESSES = 10_000  # per RecordAccesses call; the client batches
MAX_REPEATED = 10_000  # entries of argv, params, packages, sources, untracked files, ...
MAX_TEXT_BYTES = 64 * 1024  # one argv entry, one parameter value
MAX_NAME_BYTES = 1024  # host, user, commit, branch, a package, a parameter's key
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_DIFF_BYTES = 2 * 1024 * 1024  # a run's uncommitted diff (the client truncates bigger ones)
MAX_WARNINGS = 100  # per run, and capture reasons per run
MAX_WARNING_CHARS = 4096  # one warning or capture reason
MAX_CAPTURE_METHOD = 64  # characters naming how a run was captured
MAX_PIN_NOTE = 1024  # characters of a pin's note

# Digests: a lookup by prefix needs at least this many hex characters.
MIN_DIGEST_PREFIX = 8

# Times are int64 nanoseconds since the epoch, what the store keeps: 1677-09-21 .. 2262-04-11.
MIN_NS = -(2**63)
MAX_NS = 2**63 - 1
MAX_PID = 2**31 - 1

# gRPC message sizes. A request is held to the daemon's max_message_bytes (this default; a
# guard against hostile input). An answer may be bigger, up to what clients accept: a graph
# carries each run whole, environment included (1,000 runs of 200 packages: about 7 MiB).
DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
MAX_ANSWER_BYTES = 64 * 1024 * 1024
