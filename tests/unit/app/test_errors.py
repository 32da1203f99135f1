"""The problem table and the problem+json bodies built from it."""

from __future__ import annotations

import tracemalloc
from typing import Any

import orjson
import pytest

from app.errors import (
    MAX_DETAIL_CHARS,
    NAME_CHARS,
    PROBLEM_CONTENT_TYPE,
    PROBLEMS,
    Problem,
    is_v2_path,
    problem_body,
    problem_response,
    quoted,
    quoted_list,
    request_id_of,
    retry_after,
)

PROBLEM_FIELDS = {"type", "title", "status", "detail", "code", "request_id"}


@pytest.mark.parametrize("code", sorted(PROBLEMS))
def test_every_code_has_an_error_status_and_a_title(code: str) -> None:
    kind = PROBLEMS[code]
    assert 400 <= kind.status <= 599
    assert kind.title.strip()


def test_500_is_reserved_for_the_internal_error_code() -> None:
    assert [code for code, kind in PROBLEMS.items() if kind.status == 500] == ["internal-error"]


@pytest.mark.parametrize("code", sorted(PROBLEMS))
def test_a_problem_body_carries_the_rfc9457_fields_code_and_request_id(code: str) -> None:
    body = orjson.loads(problem_body(code, "what went wrong", "rid-1"))
    assert set(body) == PROBLEM_FIELDS
    assert body["type"] == f"urn:frameworm:problem:{code}"
    assert body["title"] == PROBLEMS[code].title
    assert body["status"] == PROBLEMS[code].status
    assert body["detail"] == "what went wrong"
    assert body["code"] == code
    assert body["request_id"] == "rid-1"


def test_a_v2_problem_body_adds_the_protocols_error_string() -> None:
    body = orjson.loads(problem_body("invalid-input", "bad shape", "r", v2=True))
    assert body["error"] == "bad shape"
    assert set(body) >= PROBLEM_FIELDS


def test_extra_members_are_added_beside_the_problem_fields() -> None:
    body = orjson.loads(problem_body("invalid-input", "d", None, extra={"errors": [1]}))
    assert body["errors"] == [1]
    assert body["request_id"] is None


def test_an_unknown_problem_code_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown problem code"):
        Problem("no-such-code", "detail")


def test_a_problem_knows_its_status_and_keeps_its_headers() -> None:
    problem = Problem("overloaded", "full", headers={"retry-after": "3"})
    assert problem.status == 503
    assert problem.headers == {"retry-after": "3"}
    assert str(problem) == "full"


@pytest.mark.parametrize(
    ("seconds", "header"), [(0.0, "1"), (0.2, "1"), (1.0, "1"), (1.2, "2"), (2.6, "3")]
)
def test_retry_after_is_a_whole_number_of_seconds_rounded_up_and_at_least_one(
    seconds: float, header: str
) -> None:
    assert retry_after(seconds) == {"retry-after": header}


@pytest.mark.parametrize(
    ("path", "v2"),
    [("/v2", True), ("/v2/models/x/infer", True), ("/v2x", False), ("/infer", False)],
)
def test_v2_paths_are_v2_and_lookalikes_are_not(path: str, v2: bool) -> None:
    assert is_v2_path(path) is v2


def test_the_request_id_comes_from_the_scope_state_only_when_it_is_a_string() -> None:
    assert request_id_of({"state": {"request_id": "abc"}}) == "abc"
    assert request_id_of({"state": {"request_id": 7}}) is None
    assert request_id_of({}) is None


def test_a_problem_response_is_problem_json_with_status_headers_and_v2_error() -> None:
    scope: dict[str, Any] = {"path": "/v2/models/m/infer", "state": {"request_id": "r9"}}
    problem = Problem("overloaded", "full", headers={"retry-after": "2"})
    response = problem_response(problem, scope)
    assert response.status_code == 503
    assert response.media_type == PROBLEM_CONTENT_TYPE
    assert response.headers["retry-after"] == "2"
    body = orjson.loads(bytes(response.body))
    assert body["request_id"] == "r9"
    assert body["error"] == "full"


def test_a_client_supplied_name_is_quoted_and_cut() -> None:
    assert quoted("image") == "'image'"
    long = quoted("x" * 10_000)
    assert len(long) == NAME_CHARS and long.startswith("'xxx") and long.endswith("...'")


def test_a_list_of_client_supplied_names_shows_a_few_and_counts_the_rest() -> None:
    assert quoted_list({"b", "a"}) == "['a', 'b']"
    names = [f"n{i:04d}" for i in reversed(range(1000))]
    assert quoted_list(names) == "['n0000', 'n0001', 'n0002', 'n0003', 'n0004', and 995 more]"


def test_listing_a_million_names_does_not_sort_them_all() -> None:
    """Sorting every unknown name a client sent (a 10 MB body holds a million) held the event
    loop for seconds, long enough to fail the pod's probes. Only the first few are picked out:
    nothing the size of the names is allocated."""
    names = {f"name-{i}" for i in range(100_000)}
    tracemalloc.start()
    try:
        listed = quoted_list(names)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert listed.startswith("['name-0', 'name-1', 'name-10', ") and "99995 more" in listed
    assert peak < 100_000, peak  # a sorted copy alone is 800 kB


def test_a_problem_body_bounds_its_detail_on_both_members() -> None:
    body = orjson.loads(problem_body("invalid-input", "d" * 100_000, "rid", v2=True))
    assert len(body["detail"]) == MAX_DETAIL_CHARS + 3 and body["detail"].endswith("...")
    assert body["error"] == body["detail"]
