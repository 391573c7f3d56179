"""Errors as OpenAI answers them, {"error": {message, type, param, code}}, and the handlers that
make every exception a route raises (or FastAPI raises for it) one of these."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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

    def response(self) -> JSONResponse:
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)} if self.status in (429, 503) else None
        return JSONResponse(self.body(), status_code=self.status, headers=retry)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(APIError, _api_error)
    app.add_exception_handler(PyBitnetError, _bad_input)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _internal)


async def _api_error(request: Request, exc: APIError) -> JSONResponse:
    return exc.response()


async def _bad_input(request: Request, exc: PyBitnetError) -> JSONResponse:
    return APIError(400, str(exc)).response()


async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    if errors[0]["type"] == "json_invalid":
        reason = errors[0].get("ctx", {}).get("error", "")
        return APIError(400, f"The body is not valid JSON: {reason}.").response()
    # A union field fails once per alternative: show them all, name the top-level field.
    message = "; ".join(
        f"{'.'.join(str(part) for part in e['loc'][1:])}: {e['msg']}" for e in errors
    )
    field = str(errors[0]["loc"][1]) if len(errors[0]["loc"]) > 1 else None
    return APIError(422, message, code="invalid_value", param=field).response()


async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
    codes = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
    message = (
        f"No route {request.method} {request.url.path}."
        if exc.status_code == 404
        else str(exc.detail)
    )
    return APIError(exc.status_code, message, code=codes.get(exc.status_code)).response()


async def _internal(request: Request, exc: Exception) -> JSONResponse:
    return APIError(
        500, f"Internal error: {type(exc).__name__}: {exc}", type="server_error"
    ).response()
