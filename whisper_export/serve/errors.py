"""Errors in OpenAI's shape: {"error": {"message", "type", "param", "code"}}, with the HTTP status OpenAI uses.

The codes are ours (OpenAI documents the shape, not a list of codes for the audio endpoints); the type is
OpenAI's: invalid_request_error for the client's mistakes (400, 401, 404, 405, 413), rate_limit_error (429),
server_error (500, 503).
"""

from __future__ import annotations

import re

from starlette.responses import JSONResponse

TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
         405: "invalid_request_error", 413: "invalid_request_error", 429: "rate_limit_error",
         500: "server_error", 503: "server_error"}

# a form field for each option name an options error can begin with (runtime/options.py: "<field>: received")
MAX_MESSAGE = 600  # characters of a message: a client's megabyte-long field is not echoed back whole

_PARAMS = {"language": "language", "initial_prompt": "prompt", "prompt": "prompt", "temperature": "temperature",
           "task": None}


class APIError(Exception):
    """An answer other than 200: status, one-line message, the form field at fault (or None), a code."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, _shortened(" ".join(message.split())), param, code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": TYPES.get(self.status, "invalid_request_error"),
                          "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def _shortened(message: str) -> str:
    """The message's start and end (what was received begins it, what was expected ends it) when it is long."""
    if len(message) <= MAX_MESSAGE:
        return message
    half = (MAX_MESSAGE - 5) // 2
    return f"{message[:half]} ... {message[-half:]}"


def option_error(error: Exception) -> APIError:
    """A 400 for options the runtime refused (ValueError/TypeError), naming the form field where one is at fault."""
    message = str(error)
    match = re.match(r"(?:received )?(\w+)[: ]", message)
    param = _PARAMS.get(match.group(1)) if match else None
    return APIError(400, message, param=param, code="invalid_value")
