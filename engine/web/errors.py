"""The API's errors: one exception, one JSON shape.

Every 4xx answer of ``/api/v1`` has the body ``{"error": {"code", "message",
"details"}}``; handlers raise :class:`ApiError` and the app turns it into that body.
"""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse


class ApiError(Exception):
    """An answer other than success: HTTP ``status``, a stable machine ``code``, a
    sentence for people, and optional ``details`` (a list of field or line problems)."""

    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = details or []
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        body = {"error": {"code": self.code, "message": self.message, "details": self.details}}
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def not_found(what: str) -> ApiError:
    """The one answer for "absent" and "someone else's": they must look the same."""
    return ApiError(404, "not_found", f"no such {what}")


def invalid(field: str, message: str) -> ApiError:
    return ApiError(422, "invalid", f"{field}: {message}", [{"field": field, "message": message}])


def rate_limited(what: str, retry_after: float) -> ApiError:
    seconds = max(1, int(retry_after + 0.999))
    return ApiError(429, "rate_limited", f"too many {what}; try again in {seconds} s",
                    headers={"Retry-After": str(seconds)})
