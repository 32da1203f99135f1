"""A request's client going away: the connection tells the app, the app tells the batcher.

The connection (`app.connection`) calls the function a request registered with
`on_client_gone` when the connection is lost before that request is answered; the batcher uses
it to drop a queued request, so that a client that gave up costs no forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

ON_CLIENT_GONE = "frameworm.on_client_gone"
GONE = object()  # in place of the function once the client has gone


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
