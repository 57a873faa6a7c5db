"""Who may ask: the token, the Host and the Origin checks every request passes first.

A request whose Host is not a name the daemon is reached by (its listen address, localhost,
`[http] allowed_hosts`) is refused (DNS rebinding), and so is a POST from another origin
(cross-site forms). With a token (required beyond loopback: config.py refuses to start without
one) every request carries it, as `Authorization: Bearer` or `?token=` (the page and its event
stream); it is compared in constant time.
Not the request's parsing or its routes (handler.py), and not the body's checks (a POST's
Content-Type and size are the handler's, a completion's fields completion.py's). Relies on the
[http] section of the configuration only.
"""

from __future__ import annotations

import hmac
from pathlib import Path
from urllib.parse import urlsplit

from ... import ConfigError
from .errors import RequestError


def resolve_token(config) -> str:
    """The configured token: [http] token, else the first line of token_file; ConfigError when
    the file cannot be read or is empty."""
    if config.token or not config.token_file:
        return config.token
    try:
        token = Path(config.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[http] token_file: {exc}") from None
    if not token:
        raise ConfigError(f"[http] token_file {config.token_file} is empty")
    return token


class Access:
    """The checks of one [http] section; the token is read once, when it is made."""

    def __init__(self, config) -> None:
        self.config = config
        self.token = resolve_token(config)

    def check(self, method: str, headers, query: dict) -> None:
        """RequestError (403 or 401) unless the Host, the token and, for a POST, the origin pass."""
        if not self.allowed_host(headers.get("Host")):
            raise RequestError(403, f"Host {headers.get('Host')!r} is not a name this daemon is reached by; "
                               "add it to [http] allowed_hosts")
        if not self.authorized(headers.get("Authorization"), query):
            raise RequestError(401, "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN "
                               "([http] token)", {"WWW-Authenticate": "Bearer"})
        if method == "POST":
            origin = headers.get("Origin")
            if origin is not None and not self.allowed_host(urlsplit(origin).netloc):
                raise RequestError(403, f"cross-origin request from {origin!r} refused")
            if headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
                raise RequestError(403, "cross-site request refused")

    def allowed_host(self, host: str | None) -> bool:
        """Is `host` (a Host header, or an Origin's host) a name the daemon is reached by?"""
        if not host:
            return False
        name = _host_name(host)
        allowed = {"localhost", "127.0.0.1", "::1"} | {h.lower() for h in self.config.allowed_hosts}
        listen = self.config.listen.rpartition(":")[0].strip("[]").lower()
        if listen not in ("", "0.0.0.0", "::"):
            allowed.add(listen)
        return "*" in allowed or name in allowed

    def authorized(self, header: str | None, query: dict) -> bool:
        """Does the request carry the token (always, when none is set)?"""
        if not self.token:
            return True
        given = ""
        if header and header.lower().startswith("bearer "):
            given = header[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        return hmac.compare_digest(given.encode(), self.token.encode())


def _host_name(host: str) -> str:
    """"Example.org:8484" -> "example.org"; "[::1]:8484" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host
