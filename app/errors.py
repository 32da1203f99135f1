"""Errors and the one table that maps them to RFC 9457 problem responses.

Every error a client sees is `application/problem+json` with `type`, `title`, `status`,
`detail`, `code` and `request_id` (and, on the v2 routes, the protocol's `error` string).
Bodies are redacted: they never carry exception text from inside the server, an echo of the
input or a stack trace. Unexpected exceptions are logged with their traceback and answered 500.
"""

from __future__ import annotations

import heapq
import logging
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import Send

log = logging.getLogger("frameworm.errors")

PROBLEM_CONTENT_TYPE = "application/problem+json"


@dataclass(frozen=True)
class ProblemType:
    status: int
    title: str


# code -> (status, title): the one table. `type` is urn:frameworm:problem:<code>.
PROBLEMS: dict[str, ProblemType] = {
    "malformed-request": ProblemType(400, "Malformed request"),
    "unauthorized": ProblemType(401, "Unauthorized"),
    "forbidden": ProblemType(403, "Forbidden"),
    "not-found": ProblemType(404, "Not found"),
    "model-not-found": ProblemType(404, "Model not found"),
    "method-not-allowed": ProblemType(405, "Method not allowed"),
    "payload-too-large": ProblemType(413, "Payload too large"),
    "uri-too-long": ProblemType(414, "URI too long"),
    "unsupported-media-type": ProblemType(415, "Unsupported media type"),
    "headers-too-large": ProblemType(431, "Request header fields too large"),
    "invalid-input": ProblemType(422, "Invalid input"),
    "rate-limited": ProblemType(429, "Too many requests"),
    "internal-error": ProblemType(500, "Internal server error"),
    "not-ready": ProblemType(503, "Not ready"),
    "overloaded": ProblemType(503, "Overloaded"),
    "shutting-down": ProblemType(503, "Shutting down"),
    "request-timeout": ProblemType(408, "Request timeout"),
    # nginx's code: the client closed the connection before the answer. Nobody reads it; the
    # access log and the metrics do.
    "client-closed-request": ProblemType(499, "Client closed request"),
    "deadline-exceeded": ProblemType(504, "Deadline exceeded"),
}


PROBLEM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "code": {"type": "string"},
        "request_id": {"type": ["string", "null"]},
        "error": {"type": "string", "description": "the same text, on the v2 routes"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses` entries for the problem bodies a route can answer."""
    titles = {p.status: p.title for p in reversed(PROBLEMS.values())}
    return {
        status: {
            "description": titles.get(status, "Problem"),
            "content": {PROBLEM_CONTENT_TYPE: {"schema": PROBLEM_SCHEMA}},
        }
        for status in statuses
    }


# What any guarded route can answer before it runs (middleware), and what a route adds.
GUARD_STATUSES = (401, 403, 408, 413, 429, 503)


class Problem(Exception):
    """An error with a stable code from PROBLEMS and a client-safe detail."""

    def __init__(
        self,
        code: str,
        detail: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        version: str | None = None,
    ) -> None:
        if code not in PROBLEMS:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail)
        self.code = code
        self.detail = detail
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})
        self.version = version  # the model version that failed, for the access log; not sent

    @property
    def status(self) -> int:
        return PROBLEMS[self.code].status


# A detail names what a client sent (an unknown input, a content type) so the client can fix it,
# but never whole: names are cut, lists shortened, and the detail itself bounded, so an error
# body stays small whatever the request held.
MAX_DETAIL_CHARS = 1000
NAME_CHARS = 64
LISTED_NAMES = 5


def quoted(name: object) -> str:
    """A client-supplied name for a detail: repr'd, at most NAME_CHARS characters."""
    text = repr(name)
    return text if len(text) <= NAME_CHARS else text[: NAME_CHARS - 4] + "...'"


def quoted_list(names: Collection[object]) -> str:
    """The first few names of a client-supplied collection, in order, each cut; then a count.
    Only those few are sorted out: sorting a million names held the event loop for seconds."""
    first = heapq.nsmallest(LISTED_NAMES, names, key=str)
    shown = ", ".join(quoted(n) for n in first)
    more = len(names) - LISTED_NAMES
    return f"[{shown}{f', and {more} more' if more > 0 else ''}]"


def retry_after(seconds: float) -> dict[str, str]:
    return {"retry-after": str(max(1, round(seconds + 0.499)))}


def problem_body(
    code: str,
    detail: str,
    request_id: str | None,
    *,
    v2: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> bytes:
    kind = PROBLEMS[code]
    body: dict[str, Any] = {
        "type": f"urn:frameworm:problem:{code}",
        "title": kind.title,
        "status": kind.status,
        "detail": detail if len(detail) <= MAX_DETAIL_CHARS else detail[:MAX_DETAIL_CHARS] + "...",
        "code": code,
        "request_id": request_id,
    }
    if extra:
        body.update(extra)
    if v2:
        body["error"] = body["detail"]  # the Open Inference Protocol's error member
    return orjson.dumps(body)


def is_v2_path(path: str) -> bool:
    return path == "/v2" or path.startswith("/v2/")


# A client-supplied id is echoed only if it is short and plain (it ends up in logs).
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def incoming_request_id(scope: Mapping[str, Any]) -> str | None:
    """The client's X-Request-Id, when it is one to echo."""
    for name, value in scope.get("headers", []):
        if name == b"x-request-id":
            text = value.decode("latin-1")
            return text if _REQUEST_ID.fullmatch(text) else None
    return None


def request_id_of(scope: Mapping[str, Any]) -> str | None:
    state = scope.get("state") or {}
    rid = state.get("request_id")
    return rid if isinstance(rid, str) else None


def problem_response(problem: Problem, scope: Mapping[str, Any]) -> Response:
    body = problem_body(
        problem.code,
        problem.detail,
        request_id_of(scope),
        v2=is_v2_path(scope.get("path", "")),
        extra=problem.extra,
    )
    return Response(body, problem.status, problem.headers, media_type=PROBLEM_CONTENT_TYPE)


async def send_problem(
    send: Send,
    scope: Mapping[str, Any],
    code: str,
    detail: str,
    headers: Mapping[str, str] | None = None,
) -> None:
    """Answer from pure ASGI middleware, before any route runs."""
    body = problem_body(code, detail, request_id_of(scope), v2=is_v2_path(scope.get("path", "")))
    raw_headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    await send(
        {"type": "http.response.start", "status": PROBLEMS[code].status, "headers": raw_headers}
    )
    await send({"type": "http.response.body", "body": body})


_HTTP_CODES = {
    404: "not-found",
    405: "method-not-allowed",
    413: "payload-too-large",
    415: "unsupported-media-type",
}


def _report(request: Request, error: BaseException) -> None:
    """Hand a server fault to error tracking (Sentry), when it is configured."""
    report = getattr(request.app.state, "report_error", None)
    if report is None:
        return
    host = getattr(request.state, "host", None)
    manifest = getattr(host, "manifest", None)
    report(
        error,
        {
            "request_id": request_id_of(request.scope),
            "model": getattr(manifest, "name", None),
            "model_version": getattr(manifest, "version", None),
        },
    )


async def error_response(request: Request, exc: Exception) -> Response:
    """Any exception a route raises -> its problem response. FastAPI's handlers and the direct
    inference routes (`app.api.direct`) both answer through this one function."""
    if isinstance(exc, Problem):
        if exc.status >= 500 and exc.code == "internal-error":
            _report(request, exc.__cause__ or exc)
        return problem_response(exc, request.scope)
    if isinstance(exc, StarletteHTTPException):
        code = _HTTP_CODES.get(exc.status_code, "malformed-request")
        detail = {
            "not-found": "no such route",
            "method-not-allowed": f"{request.method} is not allowed here",
        }.get(code, "the request cannot be served")
        return problem_response(
            Problem(code, detail, headers=dict(exc.headers or {})), request.scope
        )
    if isinstance(exc, RequestValidationError):
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ())), "message": e.get("msg", "")}
            for e in exc.errors()
        ]
        problem = Problem(
            "invalid-input", "the request does not match the schema", extra={"errors": errors}
        )
        return problem_response(problem, request.scope)
    if isinstance(exc, ClientDisconnect):
        # The client went away (or a limit cut the body off and already answered): nobody
        # reads this response; it is not a server fault.
        log.debug("client disconnected", extra={"request_id": request_id_of(request.scope)})
        return problem_response(
            Problem("client-closed-request", "the client disconnected"), request.scope
        )
    log.error("unhandled error", exc_info=exc, extra={"request_id": request_id_of(request.scope)})
    _report(request, exc)
    return problem_response(
        Problem("internal-error", "the server failed to handle the request"), request.scope
    )


def install_error_handlers(app: FastAPI) -> None:
    # Exception itself goes to Starlette's outermost error layer, the others to the inner one.
    for kind in (
        ClientDisconnect,
        Problem,
        StarletteHTTPException,
        RequestValidationError,
        Exception,
    ):
        app.add_exception_handler(kind, error_response)
