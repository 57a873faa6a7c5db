"""How the page and API say no: a request refused with its status and a one-line reason.

Not a fault of the daemon (the handler answers those 500 and logs them); not an HTTP library's
exception. Raised by every module of this package before anything of a response is sent, and
turned into a JSON error body by handler.py. Relies on nothing.
"""

from __future__ import annotations


class RequestError(Exception):
    """A request refused: `status` and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}
