"""The client-gone hooks of app/client_gone.py, apart from a socket."""

from __future__ import annotations

from typing import Any

from app.client_gone import GONE, ON_CLIENT_GONE, forget_client_gone, on_client_gone


def test_a_hook_is_kept_until_forgotten_and_then_holds_nothing() -> None:
    calls: list[str] = []
    scope: dict[str, Any] = {}
    on_client_gone(scope, lambda: calls.append("gone"))
    assert callable(scope[ON_CLIENT_GONE]) and calls == []
    # Answered: a keep-alive connection keeps this scope until its next request, so the hook
    # (which may reach the answer's tensors) must not stay in it.
    forget_client_gone(scope)
    assert ON_CLIENT_GONE not in scope


def test_once_the_client_has_gone_a_hook_is_called_at_once() -> None:
    calls: list[str] = []
    scope: dict[str, Any] = {ON_CLIENT_GONE: GONE}  # as the protocol marks it
    on_client_gone(scope, lambda: calls.append("gone"))
    assert calls == ["gone"]
    forget_client_gone(scope)  # the mark stays: a later hook is called at once too
    on_client_gone(scope, lambda: calls.append("again"))
    assert calls == ["gone", "again"]
