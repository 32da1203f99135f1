"""What the connection tells a request's app: its client went away, or it answered the request,
or it holds requests pipelined behind it (`read_ahead`).

The connection (`app.connection`) calls the function a request registered with
`on_client_gone` when the connection is lost before that request is answered; the batcher uses
it to drop a queued request, so that a client that gave up costs no forward pass.

When the connection itself answers a request whose app is running (a problem in the body's
framing: `refused_by_connection`) and closes, the app sees its client gone; it reports the
status the client was given, under the same request id, rather than a 499.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

from app.errors import incoming_request_id

ON_CLIENT_GONE = "frameworm.on_client_gone"
GONE = object()  # in place of the function once the client has gone
REFUSED = "frameworm.refused_by_connection"
READ_AHEAD = "frameworm.read_ahead"


def read_ahead(scope: Mapping[str, Any]) -> bool:
    """Whether the connection has read requests pipelined behind this one, to answer in turn
    (a `Connection: close` on this answer would drop them: the drain adds it only to the last)."""
    waiting = scope.get(READ_AHEAD)
    return bool(waiting is not None and waiting())


def on_client_gone(scope: MutableMapping[str, Any], call: Callable[[], None]) -> None:
    """Have `call` called when the request's client goes away: at once if it already has.

    Call `forget_client_gone` once the answer is there: uvicorn keeps a keep-alive
    connection's last scope until its next request, and `call` may hold on to the answer.
    """
    if scope.get(ON_CLIENT_GONE) is GONE:
        call()
    else:
        scope[ON_CLIENT_GONE] = call


def forget_client_gone(scope: MutableMapping[str, Any]) -> None:
    if scope.get(ON_CLIENT_GONE) is not GONE:
        scope.pop(ON_CLIENT_GONE, None)


def refused_by_connection(scope: MutableMapping[str, Any], code: str, detail: str) -> str:
    """Record that the connection answers this request with the problem `code`; the request id
    for that problem: the app's, or one the app will take if it has not run yet."""
    scope[REFUSED] = (code, detail)
    state: dict[str, Any] = scope.setdefault("state", {})
    if "request_id" not in state:  # the app has not run: the id it will take, the client's if any
        state["request_id"] = incoming_request_id(scope) or uuid.uuid4().hex
    return str(state["request_id"])


def connection_refusal(scope: Mapping[str, Any]) -> tuple[str, str] | None:
    """(code, detail) of the problem the connection answered this request with, if it did."""
    refusal: tuple[str, str] | None = scope.get(REFUSED)
    return refusal
