"""The HTTP server of ``lineage ui``: read-only pages and JSON over one ``Client``.

Safe by default:
- GET and HEAD only; any other method is ``405``. Nothing a request does writes anything.
- Loopback only unless told otherwise. On loopback, requests must name a loopback host in
  ``Host`` (a web page elsewhere cannot reach this server through DNS rebinding).
- A listener on any other address needs a token, with the daemon's TCP rules (a token file
  of one line of printable ASCII, no spaces; a warning when others can read it). Browsers
  present it once as ``?token=...`` and keep it in an HttpOnly, SameSite=Strict cookie;
  scripts send ``Authorization: Bearer <token>``. The token is never logged.
- Every response carries a Content-Security-Policy allowing only this server's own script
  and style (no inline script, no network elsewhere); assets ship in the package.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import signal
import socket
import sys
import threading
import webbrowser
from collections.abc import Callable, Mapping
from http import HTTPStatus
from http.cookies import CookieError, SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from lineage_core.credentials import read_token
from lineage_core.errors import ConfigError, InvalidArgument, LineageError, NotFound
from lineage_core.models import Direction

from lineage_client.client import Client
from lineage_client.ui import _assets, _pages, _views

__all__ = ["DEFAULT_PORT", "UiServer", "is_loopback", "parse_listen", "read_token", "serve"]

logger = logging.getLogger("lineage_client.ui")

DEFAULT_PORT = 8765
COOKIE = "lineage_ui_token"
MAX_QUERY = 16 * 1024  # bytes of query string accepted
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:;"
    " connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_HTTP_STATUS = {
    "INVALID_ARGUMENT": HTTPStatus.BAD_REQUEST,
    "NOT_FOUND": HTTPStatus.NOT_FOUND,
    "UNAVAILABLE": HTTPStatus.SERVICE_UNAVAILABLE,
    "PERMISSION_DENIED": HTTPStatus.FORBIDDEN,
    "DEADLINE_EXCEEDED": HTTPStatus.GATEWAY_TIMEOUT,
    "UNAUTHENTICATED": HTTPStatus.BAD_GATEWAY,  # the daemon refused this server, not the browser
    "RESOURCE_EXHAUSTED": HTTPStatus.SERVICE_UNAVAILABLE,
}


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    name = host.strip("[]").lower()
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8765`` for IPv6) as a host and a port."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen takes HOST:PORT (e.g. 127.0.0.1:8765), not {text!r}")
    return host, int(port)


class _Response(Exception):
    """Raised by a route to answer at once (redirects, refusals)."""

    def __init__(self, status: HTTPStatus, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(status.phrase)
        self.status = status
        self.headers = dict(headers or {})


class UiServer(ThreadingHTTPServer):
    """``lineage ui``: serves the pages from ``client`` until ``shutdown()``."""

    daemon_threads = True

    def __init__(
        self, client: Client, host: str = "127.0.0.1", port: int = DEFAULT_PORT, *, token: str = ""
    ) -> None:
        if not is_loopback(host) and not token:
            raise ConfigError(
                f"refusing to listen on {host} without authentication: give --listen-token-file"
            )
        self.client = client
        self.token = token
        self.loopback = is_loopback(host)
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            super().__init__((host, port), _Handler)
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc};"
                " choose another --port (0 picks a free one)"
            ) from None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The address a browser opens."""
        host, port = self.server_address[:2]
        name = host.decode() if isinstance(host, bytes) else str(host)
        shown = f"[{name}]" if ":" in name else name
        return f"http://{shown}:{port}/"

    def start(self) -> UiServer:
        """Serve on a thread of its own (tests, embedding); ``close()`` stops it."""
        self._thread = threading.Thread(target=self.serve_forever, name="lineage-ui", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        """Stop serving and release the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> UiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.exception("lineage ui: error while answering %s", client_address[0])


class _Handler(BaseHTTPRequestHandler):
    server: UiServer
    server_version = "lineage-ui"
    sys_version = ""
    protocol_version = "HTTP/1.0"  # one request per connection: no idle keep-alive threads
    timeout = 30
    _extra_headers: dict[str, str]

    def setup(self) -> None:
        super().setup()
        self._extra_headers = {}

    # --- plumbing ------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        # Access lines would carry query strings (paths, and a ?token= once); say nothing.
        return

    def _send(
        self,
        status: HTTPStatus,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
        cache: str = "no-store",
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Content-Security-Policy", CSP)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("X-Frame-Options", "DENY")
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Resource-Policy", "same-origin")
        self.send_header("Cache-Control", cache)
        for key, value in {**self._extra_headers, **(headers or {})}.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _html(self, status: HTTPStatus, page: str) -> None:
        self._send(status, page.encode("utf-8"), "text/html; charset=utf-8")

    def _json(self, status: HTTPStatus, value: object) -> None:
        body = json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
        self._send(status, body, "application/json; charset=utf-8")

    def _error(self, api: bool, status: HTTPStatus, kind: str, message: str) -> None:
        if api:
            self._json(
                status, {"error": {"status": int(status), "class": kind, "message": message}}
            )
        else:
            self._html(status, _pages.error_page(int(status), kind, message))

    def _refuse_method(self) -> None:
        self._error(
            self.path.startswith("/api/"),
            HTTPStatus.METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            f"{self.command} is not allowed: lineage ui is read-only (GET and HEAD)",
        )

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse_method

    # --- access --------------------------------------------------------------------------

    def _host_allowed(self) -> bool:
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if host.startswith("[") and "]" in host:
            name = host[1 : host.index("]")]
        return is_loopback(name)

    def _presented_token(self, query: Mapping[str, str]) -> str:
        authorization = self.headers.get("Authorization", "")
        if authorization.startswith("Bearer "):
            return authorization[len("Bearer ") :].strip()
        if "token" in query:
            return query["token"]
        try:
            cookie = SimpleCookie(self.headers.get("Cookie", ""))
        except CookieError:
            return ""
        morsel = cookie.get(COOKIE)
        return morsel.value if morsel is not None else ""

    def _check_access(self, path: str, query: dict[str, str]) -> None:
        expected = self.server.token
        if self.server.loopback and not expected and not self._host_allowed():
            raise _Response(HTTPStatus.FORBIDDEN)
        if not expected or path.startswith("/static/"):
            return  # the package's own assets hold no data: an error page keeps its style
        presented = self._presented_token(query)
        if not hmac.compare_digest(presented.encode(), expected.encode()):
            raise _Response(HTTPStatus.UNAUTHORIZED, {"WWW-Authenticate": "Bearer"})
        if "token" in query:
            # Keep the token in a cookie and take it out of the address bar and history.
            rest = "&".join(
                part
                for part in (urlsplit(self.path).query or "").split("&")
                if not part.startswith("token=")
            )
            raise _Response(
                HTTPStatus.SEE_OTHER,
                {
                    "Location": path + (f"?{rest}" if rest else ""),
                    "Set-Cookie": f"{COOKIE}={expected}; HttpOnly; SameSite=Strict; Path=/",
                },
            )

    # --- routes --------------------------------------------------------------------------

    def do_HEAD(self) -> None:
        self.do_GET()

    def do_GET(self) -> None:
        split = urlsplit(self.path)
        path = unquote(split.path)
        api = path.startswith("/api/")
        try:
            if len(split.query) > MAX_QUERY:
                raise _Response(HTTPStatus.REQUEST_URI_TOO_LONG)
            query = self._query(split.query)
            self._check_access(split.path, query)
            self._route(path, query, api)
        except _Response as answer:
            self._answer(answer, api)
        except LineageError as exc:
            status = _HTTP_STATUS.get(exc.grpc_status, HTTPStatus.INTERNAL_SERVER_ERROR)
            self._error(api, status, type(exc).__name__, exc.message)
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:
            logger.exception("lineage ui: %s failed", split.path)
            self._error(
                api,
                HTTPStatus.INTERNAL_SERVER_ERROR,
                "InternalError",
                "lineage ui failed to answer; its terminal has the details",
            )

    def _answer(self, answer: _Response, api: bool) -> None:
        status = answer.status
        if status in (HTTPStatus.SEE_OTHER, HTTPStatus.NO_CONTENT):
            self._send(status, b"", "text/plain; charset=utf-8", answer.headers)
            return
        self._extra_headers.update(answer.headers)
        messages = {
            HTTPStatus.FORBIDDEN: "this server answers only requests addressed to a loopback"
            " host (localhost, 127.0.0.1 or [::1])",
            HTTPStatus.UNAUTHORIZED: "this lineage ui needs its token: open /?token=TOKEN once"
            " (the contents of its --listen-token-file), or send Authorization: Bearer TOKEN",
            HTTPStatus.REQUEST_URI_TOO_LONG: f"the query string is longer than {MAX_QUERY} bytes",
        }
        message = messages.get(status, status.phrase)
        self._error(api, status, status.phrase.replace(" ", ""), message)

    @staticmethod
    def _query(text: str) -> dict[str, str]:
        try:
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=False, errors="strict")
        except (ValueError, UnicodeDecodeError):
            raise InvalidArgument("the query string is not valid UTF-8") from None
        query: dict[str, str] = {}
        for key, value in pairs:
            if key in query:
                raise InvalidArgument(f"give {key} once")
            query[key] = value
        return query

    def _route(self, path: str, query: dict[str, str], api: bool) -> None:
        client = self.server.client
        page = path[len("/api") :] if api else path
        if not api and page.startswith("/static/"):
            name = page[len("/static/") :]
            if name not in _assets.TYPES:
                raise _Response(HTTPStatus.NOT_FOUND)
            versioned = "v" in query and _assets.asset_url(name).endswith(f"?v={query['v']}")
            cache = "public, max-age=31536000, immutable" if versioned else "no-cache"
            self._send(HTTPStatus.OK, _assets.asset(name), _assets.TYPES[name], cache=cache)
            return
        if page == "/favicon.ico":
            raise _Response(HTTPStatus.NO_CONTENT)
        views: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[Any], str]]] = {
            "/": (lambda: _views.home_view(client), _pages.home_page),
            "/trace": (
                lambda: _views.graph_view(client, Direction.UPSTREAM, _views.graph_query(query)),
                _pages.graph_page,
            ),
            "/impact": (
                lambda: _views.graph_view(client, Direction.DOWNSTREAM, _views.graph_query(query)),
                _pages.graph_page,
            ),
            "/path": (lambda: _views.path_view(client, query.get("path", "")), _pages.path_page),
        }
        if api and page == "/status":
            self._json(HTTPStatus.OK, _views.home_view(client)["status"])
            return
        if page == "/search":
            found = _views.search_view(client, query.get("q", ""))
            if api:
                self._json(HTTPStatus.OK, found)
                return
            raise _Response(HTTPStatus.SEE_OTHER, {"Location": found["url"]})
        if page.startswith("/run/") and len(page) > len("/run/"):
            run_id = page[len("/run/") :]
            views[page] = (lambda: _views.run_view(client, run_id), _pages.run_page)
        if page not in views:
            raise NotFound(
                f"no page {page}: try /, /trace?path=P, /impact?path=P, /run/RUN_ID or /path?path=P"
            )
        build, draw = views[page]
        view = build()
        if api:
            self._json(HTTPStatus.OK, view)
        else:
            self._html(HTTPStatus.OK, draw(view))


def serve(
    client: Client,
    host: str,
    port: int,
    *,
    token: str = "",
    open_browser: bool = False,
    out: Callable[[str], None] = print,
) -> int:
    """Serve until Ctrl-C or SIGTERM (from the main thread); prints the URL first. Returns 0."""
    client.status()  # the daemon answers, or the command fails at once with a clear error
    with UiServer(client, host, port, token=token) as server:
        out(f"lineage ui: {server.url}")
        if token:
            out(
                "lineage ui: browsers open it once with ?token=TOKEN (the contents of the token"
                " file); the token is kept in a cookie"
            )
        out("lineage ui: read-only; Ctrl-C stops it")
        sys.stdout.flush()
        if open_browser:
            webbrowser.open(server.url)
        # SIGTERM stops it as Ctrl-C does: KeyboardInterrupt in the main thread, no lock taken.
        previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
        try:
            with contextlib.suppress(KeyboardInterrupt):
                server.serve_forever()
        finally:
            signal.signal(signal.SIGTERM, previous)
    return 0
