"""What leaves for Sentry: `scrub` removes bodies, cookies and credentials; off without a DSN."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from app.config import Settings
from app.telemetry.error_tracking import init_error_tracking, scrub


def event_with_request() -> dict[str, Any]:
    return {
        "event_id": "0" * 32,
        "tags": {"request_id": "rid-1", "model_version": "1.0.0"},
        "request": {
            "url": "http://frameworm/infer",
            "method": "POST",
            "query_string": "api_key=fw_0123456789abcdef_secret",
            "cookies": {"session": "s3cr3t"},
            "data": {"inputs": {"image": [[0.5]]}},
            "headers": {
                "Authorization": "Bearer fw_0123456789abcdef_secret",
                "X-API-Key": "fw_0123456789abcdef_secret",
                "Cookie": "session=s3cr3t",
                "Proxy-Authorization": "Basic dXNlcjpwYXNz",
                "Content-Type": "application/json",
                "X-Request-ID": "rid-1",
            },
        },
    }


def test_scrub_drops_the_body_cookies_and_query_string() -> None:
    request = scrub(event_with_request(), {})["request"]
    assert request.keys() == {"url", "method", "headers"}


def test_scrub_filters_credential_headers_whatever_their_case() -> None:
    headers = scrub(event_with_request(), {})["request"]["headers"]
    assert headers == {
        "Authorization": "[Filtered]",
        "X-API-Key": "[Filtered]",
        "Cookie": "[Filtered]",
        "Proxy-Authorization": "[Filtered]",
        "Content-Type": "application/json",
        "X-Request-ID": "rid-1",
    }


@pytest.mark.parametrize("name", ["set-cookie", "SET-COOKIE", "x-api-key", "authorization"])
def test_scrub_filters_each_secret_header_name(name: str) -> None:
    event = {"request": {"headers": {name: "secret-value"}}}
    assert scrub(event, {})["request"]["headers"] == {name: "[Filtered]"}


def test_scrub_leaves_everything_but_the_request_alone() -> None:
    event = event_with_request()
    scrubbed = scrub(copy.deepcopy(event), {})
    assert {k: v for k, v in scrubbed.items() if k != "request"} == {
        k: v for k, v in event.items() if k != "request"
    }


@pytest.mark.parametrize(
    "event",
    [{}, {"request": None}, {"request": "not a dict"}, {"message": "no request"}],
    ids=["empty", "null-request", "odd-request", "message-only"],
)
def test_scrub_passes_events_without_a_request_through(event: dict[str, Any]) -> None:
    assert scrub(copy.deepcopy(event), {}) == event


def test_error_tracking_is_off_without_a_dsn(tmp_path: Path) -> None:
    settings = Settings(_env_file=None, registry=str(tmp_path), sentry_dsn=None)
    assert init_error_tracking(settings) is None
