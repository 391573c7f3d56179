"""Errors as OpenAI answers them, {"error": {message, type, param, code}}, and the handlers that
make every exception a route raises (or FastAPI raises for it) one of these: a validation error
is a 400 naming the field (OpenAI's status, not FastAPI's 422), and no message shows where the
model lies on the server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException

from pybitnet.errors import PyBitnetError

RETRY_AFTER_SECONDS = 1


class APIError(Exception):
    """An error answered to the client as an OpenAI error object."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> Response:
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status in (429, 503) else None
        # ASCII JSON: whatever text a message quotes (a lone surrogate too), it can be written.
        content = json.dumps(self.body()).encode()
        return Response(content, self.status, retry, media_type="application/json")


def without_paths(message: str, model_path: Path) -> str:
    """A message fit for a client: the model's path on the server shown as its file name."""
    for path in {str(model_path.resolve()), str(model_path)}:
        message = message.replace(path, model_path.name)
    return message


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(PyBitnetError, _bad_input)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)


async def _api_error(request: Request, exc: APIError) -> Response:
    return exc.response()


async def _bad_input(request: Request, exc: PyBitnetError) -> Response:
    return APIError(400, without_paths(str(exc), request.app.state.model.path)).response()


async def _invalid(request: Request, exc: RequestValidationError) -> Response:
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error", "")
        return APIError(400, f"The body is not valid JSON: {reason}.").response()
    # A union field fails once per alternative: show them all, name the top-level field (or
    # the place a check of the whole body names in its context).
    message = "; ".join(_located(e["loc"][1:], e["msg"]) for e in errors)
    first = errors[0]
    field = first.get("ctx", {}).get("field") or (
        str(first["loc"][1]) if len(first["loc"]) > 1 else None
    )
    return APIError(400, message, code="invalid_value", param=field).response()


def _located(loc: tuple[Any, ...], message: str) -> str:
    return f"{'.'.join(str(part) for part in loc)}: {message}" if loc else message


async def _http_error(request: Request, exc: HTTPException) -> Response:
    codes = {
        404: "not_found",
        405: "method_not_allowed",
        408: "request_timeout",
        413: "request_too_large",
    }
    if exc.status_code == 404:
        message = f"No route {request.method} {request.url.path}."
    elif exc.status_code == 400 and exc.__cause__ is not None:
        # FastAPI's "error parsing the body": say why (bytes that are no UTF-8, JSON too deep).
        message = f"The body is not valid JSON: {exc.__cause__}."
    else:
        message = str(exc.detail)
    return APIError(exc.status_code, message, code=codes.get(exc.status_code)).response()


async def _internal(request: Request, exc: Exception) -> Response:
    message = without_paths(
        f"Internal error: {type(exc).__name__}: {exc}", request.app.state.model.path
    )
    return APIError(500, message, type="server_error").response()
