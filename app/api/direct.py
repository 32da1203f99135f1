"""DirectRoutes: the inference routes served straight from the middleware stack.

The inference routes are the hot path, and FastAPI's per-request machinery (its router walking
included routers, dependency solving, the request/response wrappers and their exit stacks)
costs about 0.2 ms a request on this kind of machine, several times a small model's share of a
batched forward pass. So the innermost middleware answers `POST` on these routes itself: it
matches the path, sets `scope["route"]` to the route FastAPI declared (logs, metrics and span
names see the same template), calls the endpoint and sends its Response.

FastAPI still owns everything else about these routes: they are declared there as usual, so the
OpenAPI document describes them from the same endpoint functions, and any other method reaches
FastAPI's router (405). Every middleware in front of this one (limits, auth, rate limits,
metrics, context) applies unchanged; exceptions are answered by the same table as FastAPI's
handlers (`app.errors.error_response`).

An endpoint served here takes the `Request` first and path parameters by name, declares no
dependencies and returns a `Response`; `DirectRoutes` checks that at startup.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable

from fastapi.routing import APIRoute
from starlette.requests import Request
from starlette.routing import Match
from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import error_response


class DirectRoutes:
    def __init__(self, app: ASGIApp, *, routes: Iterable[APIRoute], method: str = "POST") -> None:
        self.app = app
        self.method = method
        self.static: dict[str, APIRoute] = {}
        self.templated: list[APIRoute] = []
        for route in routes:
            _check_direct(route, method)
            if route.param_convertors:
                self.templated.append(route)
            else:
                self.static[route.path] = route

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = self._match(scope) if scope["type"] == "http" else None
        if route is None:
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive, send)
        try:
            response = await route.endpoint(request, **scope["path_params"])
        except Exception as exc:
            response = await error_response(request, exc)
        await response(scope, receive, send)

    def _match(self, scope: Scope) -> APIRoute | None:
        if scope["method"] != self.method:
            return None
        path = scope["path"]
        route = self.static.get(path)
        if route is not None:
            scope["route"], scope["endpoint"], scope["path_params"] = route, route.endpoint, {}
            return route
        for route in self.templated:
            match, child = route.matches(scope)
            if match is Match.FULL:
                scope.update(child)
                return route
        return None


def _check_direct(route: APIRoute, method: str) -> None:
    """Refuse, at startup, a route this layer could not serve exactly as FastAPI would."""
    where = f"direct route {method} {route.path}"
    if route.methods != {method}:
        raise TypeError(f"{where}: the route must take {method} only")
    if not inspect.iscoroutinefunction(route.endpoint):
        raise TypeError(f"{where}: the endpoint must be an async def")
    if route.dependant.dependencies or route.dependencies:
        raise TypeError(f"{where}: the endpoint may not declare dependencies")
    parameters = list(inspect.signature(route.endpoint).parameters.values())
    if not parameters or parameters[0].annotation not in (Request, "Request"):
        raise TypeError(f"{where}: the endpoint's first parameter must be the Request")
    if {p.name for p in parameters[1:]} != set(route.param_convertors):
        raise TypeError(f"{where}: its other parameters must be the path's")
