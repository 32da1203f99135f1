"""DirectRoutes: POST on the inference routes served from the middleware stack."""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any

import httpx
import pytest
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.routing import APIRoute
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from app.api.direct import DirectRoutes
from app.errors import Problem, install_error_handlers

router = APIRouter()
seen: list[dict[str, Any]] = []
reached_fastapi: list[str] = []  # "METHOD path" of each request the inner app received


@router.post("/infer", summary="documented")
async def infer(request: Request) -> Response:
    seen.append({"route": request.scope["route"].path, "body": await request.body()})
    if request.headers.get("x-fail") == "problem":
        raise Problem("invalid-input", "bad input")
    if request.headers.get("x-fail") == "crash":
        raise RuntimeError("secret internals")
    return JSONResponse({"ok": True})


@router.post("/v2/models/{name}/versions/{version}/infer")
async def versioned(request: Request, name: str, version: str) -> Response:
    return JSONResponse({"name": name, "version": version, "route": request.scope["route"].path})


def direct_app() -> tuple[FastAPI, DirectRoutes]:
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(router)
    routes = [r for r in router.routes if isinstance(r, APIRoute)]

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        reached_fastapi.append(f"{scope['method']} {scope['path']}")
        await app(scope, receive, send)

    return app, DirectRoutes(inner, routes=routes)


def request(method: str, path: str, **options: Any) -> httpx.Response:
    _, asgi = direct_app()
    reached_fastapi.clear()

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=asgi, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **options)

    return asyncio.run(go())


def test_post_is_served_directly_with_the_declared_route_in_the_scope() -> None:
    seen.clear()
    response = request("POST", "/infer", content=b"abc")
    assert response.status_code == 200
    assert seen == [{"route": "/infer", "body": b"abc"}]
    assert reached_fastapi == []


def test_path_parameters_reach_the_endpoint_by_name() -> None:
    response = request("POST", "/v2/models/m/versions/3/infer")
    assert response.json() == {
        "name": "m",
        "version": "3",
        "route": "/v2/models/{name}/versions/{version}/infer",
    }
    assert reached_fastapi == []


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/infer", 405),
        ("POST", "/infer/", 307),  # FastAPI's own redirect to /infer
        ("POST", "/nothing", 404),
        ("POST", "/v2/models/m/versions/3/infer/extra", 404),
    ],
)
def test_other_methods_and_paths_go_to_fastapi(method: str, path: str, status: int) -> None:
    response = request(method, path, follow_redirects=False)
    assert response.status_code == status
    assert reached_fastapi == [f"{method} {path}"]


def test_errors_are_answered_by_the_same_table_as_fastapi(caplog: pytest.LogCaptureFixture) -> None:
    problem = request("POST", "/infer", headers={"x-fail": "problem"})
    assert problem.status_code == 422
    assert problem.headers["content-type"] == "application/problem+json"
    with caplog.at_level(logging.ERROR, logger="frameworm.errors"):
        crash = request("POST", "/infer", headers={"x-fail": "crash"})
    assert crash.status_code == 500
    assert "secret" not in crash.text
    assert any(r.exc_info for r in caplog.records)


def test_the_openapi_document_still_describes_the_routes() -> None:
    app, _ = direct_app()
    paths = app.openapi()["paths"]
    assert paths["/infer"]["post"]["summary"] == "documented"
    parameters = paths["/v2/models/{name}/versions/{version}/infer"]["post"]["parameters"]
    assert {p["name"] for p in parameters} == {"name", "version"}


async def _plain(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("never called")


def _route(endpoint: Any, path: str = "/x", methods: list[str] | None = None) -> APIRoute:
    return APIRoute(path, endpoint, methods=methods or ["POST"])


async def _with_dependency(request: Request, x: int = 0) -> Response:
    return Response()


def _one() -> int:
    return 1


async def _depends(request: Request, one: Annotated[int, Depends(_one)]) -> Response:
    return Response()


def _not_async(request: Request) -> Response:
    return Response()


async def _no_request(name: str) -> Response:
    return Response()


@pytest.mark.parametrize(
    ("route", "match"),
    [
        (_route(infer, methods=["GET", "POST"]), "POST only"),
        (_route(_not_async), "async def"),
        (_route(_no_request, "/x/{name}"), "first parameter"),
        (_route(_with_dependency), "path's"),
        (_route(_depends), "dependencies"),
    ],
)
def test_a_route_it_could_not_serve_exactly_is_refused_at_startup(
    route: APIRoute, match: str
) -> None:
    with pytest.raises(TypeError, match=match):
        DirectRoutes(_plain, routes=[route])
