"""RFC 9457 problem details: every error the API answers has this shape."""

from __future__ import annotations

import logging
import re
from typing import Any, TypeVar

import asyncpg
import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.plugins.problem_details import (
    ProblemDetailsConfig,
    ProblemDetailsException,
    ProblemDetailsPlugin,
)
from redis import exceptions as redis_exceptions

from service.breaker import BreakerOpen, pool_exhausted
from service.models import InvalidField

log = logging.getLogger("rankstream.api")
_NAMED_FIELD = re.compile(r"(?:unknown|missing required) field `([^`]+)`")
T = TypeVar("T")


class Problem(ProblemDetailsException):
    """An error answer; `field` names the offending input when there is one."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        field: str | None = None,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        body = dict(extra or {})
        if field is not None:
            body["field"] = field
        super().__init__(
            detail=detail or title,
            status_code=status,
            title=title,
            headers=headers,
            extra=body or None,
        )


def invalid(field: str, message: str, status: int = 422) -> Problem:
    """A problem naming one bad field."""
    return Problem(
        status,
        "Invalid request",
        f"{field}: {message}",
        field=field,
        extra={"errors": [{"field": field, "message": message}]},
    )


def _field_of(item: dict[str, Any]) -> str:
    message = str(item.get("message", ""))
    if match := _NAMED_FIELD.search(message):
        return match.group(1)  # Litestar names the body `data`; the client wants the key
    return str(item.get("key") or item.get("source") or "body")


def field_path(message: str) -> tuple[str, str]:
    """(field, message) of a msgspec error like "Expected `int`, got `str` - at `$.score`"."""
    text, _, where = message.partition(" - at `$")
    path = where.rstrip("`").lstrip(".")
    if match := _NAMED_FIELD.search(text):
        path = f"{path}.{match.group(1)}" if path else match.group(1)
    return path or "body", text


def decode_body(raw: bytes, type_: type[T]) -> T:
    """Decode a JSON body strictly: "10" is not 10 and 2.0 is not 2.

    Litestar converts bodies leniently, so handlers that take numbers from clients decode
    the raw bytes again with msgspec's strict rules."""
    try:
        return msgspec.json.decode(raw, type=type_)
    except msgspec.ValidationError as exc:
        field, message = field_path(str(exc))
        raise invalid(field, message) from None
    except msgspec.DecodeError as exc:
        raise Problem(400, "Malformed JSON", str(exc), field="body") from None


def _from_validation(exc: ValidationException) -> ProblemDetailsException:
    errors = [
        {"field": _field_of(item), "message": item["message"]}
        for item in (exc.extra or [])
        if isinstance(item, dict) and "message" in item
    ]
    if not errors:
        return Problem(400, "Malformed request", str(exc.detail), field="body")
    first = errors[0]
    status = 400 if first["field"] == "body" else 422
    return Problem(
        status,
        "Invalid request",
        f"{first['field']}: {first['message']}",
        field=first["field"],
        extra={"errors": errors},
    )


def _from_invalid_field(exc: InvalidField) -> ProblemDetailsException:
    return invalid(exc.field, exc.message)


def _from_http(exc: HTTPException) -> ProblemDetailsException:
    return ProblemDetailsException(
        status_code=exc.status_code, title=exc.detail, detail=exc.detail, headers=exc.headers
    )


# A dependency that is down or restarting: the client should retry, not report a bug.
UNAVAILABLE: tuple[type[Exception], ...] = (
    redis_exceptions.ConnectionError,
    redis_exceptions.TimeoutError,
    redis_exceptions.BusyLoadingError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.OperatorInterventionError,
    ConnectionError,
    TimeoutError,
)


def internal_error(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    """Any unexpected error: logged with its trace, answered without one.

    Redis or PostgreSQL being unreachable is not unexpected: 503 with Retry-After."""
    from service import metrics

    if dependency := metrics.dependency_of(exc):
        metrics.dependency_error(dependency, "api")
    if isinstance(exc, BreakerOpen):
        return Problem(
            503,
            "Service unavailable",
            f"{exc.name} is unavailable; retry shortly",
            headers={"Retry-After": "1"},
        ).to_response(request)
    if isinstance(exc, UNAVAILABLE):
        services = getattr(request.app.state, "services", None)
        breaker = services.breakers.of(dependency) if services else None
        if breaker is not None and not pool_exhausted(exc):
            breaker.failure()
        log.warning("dependency unavailable on %s %s: %r", request.method, request.url.path, exc)
        problem = Problem(
            503,
            "Service unavailable",
            "a storage dependency is unreachable; retry shortly",
            headers={"Retry-After": "1"},
        )
        return problem.to_response(request)
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Problem(500, "Internal server error", "The server failed to answer.").to_response(
        request
    )


def plugin() -> ProblemDetailsPlugin:
    """The ProblemDetailsPlugin with rankstream's conversions."""
    return ProblemDetailsPlugin(
        ProblemDetailsConfig(
            enable_for_all_http_exceptions=True,
            exception_to_problem_detail_map={
                ValidationException: _from_validation,
                InvalidField: _from_invalid_field,
                HTTPException: _from_http,
            },
        )
    )
