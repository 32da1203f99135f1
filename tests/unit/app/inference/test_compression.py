"""Compressed request bodies: decoded within the body limit, refused clearly otherwise."""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable

import pytest

from app.errors import Problem
from app.inference.compression import MAX_GZIP_MEMBERS, decompressed, is_identity

BODY = b'{"inputs": {"x": [[0.5, 0.25]]}}' * 10


def refused(code: str) -> pytest.RaisesExc[Problem]:
    return pytest.raises(Problem, check=lambda p: p.code == code)


@pytest.mark.parametrize("encoding", [None, "", "identity", " Identity "])
def test_no_content_coding_leaves_the_body_as_it_is(encoding: str | None) -> None:
    assert is_identity(encoding)
    assert decompressed(BODY, encoding, 1024) is BODY


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [  # what tritonclient sends for each
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
    ],
)
def test_gzip_and_deflate_bodies_are_decompressed(
    encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    assert decompressed(compress(BODY), encoding, 1024) == BODY


@pytest.mark.parametrize("encoding", ["gzip,", ", gzip", " ,GZIP, ", "gzip, ,"])
def test_empty_elements_of_the_coding_list_are_ignored(encoding: str) -> None:
    """RFC 9110 5.6.1: `gzip,` (or a second, empty Content-Encoding line) is `gzip`."""
    assert decompressed(gzip.compress(BODY), encoding, 1024) == BODY


def test_a_body_that_expands_past_the_limit_is_413_without_inflating_it_all() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB of zeros in about 64 kB
    assert len(bomb) < 100_000
    with refused("payload-too-large") as caught:
        decompressed(bomb, "gzip", 1024 * 1024)
    assert "once decompressed" in caught.value.detail


def test_a_body_exactly_at_the_limit_is_accepted() -> None:
    assert decompressed(gzip.compress(BODY), "gzip", len(BODY)) == BODY


def test_a_gzip_body_of_several_members_is_their_contents_joined() -> None:
    # RFC 1952 2.2: `cat a.gz b.gz` is a valid gzip file, and gunzip reads it so.
    half = len(BODY) // 2
    members = gzip.compress(BODY[:half]) + gzip.compress(BODY[half:])
    assert decompressed(members, "gzip", len(BODY)) == BODY
    with refused("payload-too-large"):  # the limit holds across members
        decompressed(members, "gzip", len(BODY) - 1)


def test_more_gzip_members_than_the_bound_are_a_400_at_once() -> None:
    # Each member copies the rest of the body: unbounded, empty members held the loop for
    # a time growing with the square of the body's size.
    assert decompressed(gzip.compress(b"") * MAX_GZIP_MEMBERS, "gzip", 1024) == b""
    many = gzip.compress(b"") * 500_000  # 10 MB
    with refused("malformed-request") as caught:
        decompressed(many, "gzip", 10 * 1024 * 1024)
    assert f"more than {MAX_GZIP_MEMBERS} gzip members" in caught.value.detail


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        ("gzip", b"not compressed at all"),
        ("gzip", gzip.compress(BODY)[:-8]),
        ("gzip", gzip.compress(BODY) + b"trailing"),
        ("gzip", gzip.compress(BODY) + gzip.compress(BODY)[:-8]),
        ("deflate", zlib.compress(BODY) + zlib.compress(BODY)),
    ],
    ids=["garbage", "truncated", "trailing-bytes", "truncated-second-member", "deflate-twice"],
)
def test_a_body_that_is_not_valid_for_its_coding_is_a_400(encoding: str, body: bytes) -> None:
    with refused("malformed-request"):
        decompressed(body, encoding, 1024)


@pytest.mark.parametrize("encoding", ["br", "zstd", "gzip, deflate", "compress"])
def test_other_content_codings_are_415(encoding: str) -> None:
    with refused("unsupported-media-type") as caught:
        decompressed(BODY, encoding, 1024)
    assert "gzip or deflate" in caught.value.detail
