"""S3Store against a real S3 server: reads, conditional writes, listing, the download cache."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from models.errors import ArtefactSizeError, InvalidNameError, RegistryError
from models.s3 import (
    S3BucketNotFoundError,
    S3OutcomeUnknownError,
    S3Store,
    S3UnreachableError,
    parse_s3_url,
)
from models.store import open_store
from tests.support import free_port
from tests.support.s3 import S3Server


def test_open_store_chooses_s3_for_an_s3_url(s3_url: str) -> None:
    store = open_store(s3_url)
    assert isinstance(store, S3Store)
    assert store.url == s3_url


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("s3://bucket", ("bucket", "")),
        ("s3://bucket/", ("bucket", "")),
        ("s3://my.bucket/a/b/", ("my.bucket", "a/b")),
    ],
)
def test_s3_urls_split_into_bucket_and_prefix(url: str, expected: tuple[str, str]) -> None:
    assert parse_s3_url(url) == expected


@pytest.mark.parametrize("url", ["s3://", "s3://Bad_Bucket/x", "s3://bucket/../x", "/tmp/x"])
def test_malformed_s3_urls_are_refused(url: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_s3_url(url)


def test_a_missing_key_reads_as_none_and_has_no_local_path(s3_url: str) -> None:
    store = S3Store(s3_url)
    assert store.read("m/index.json") is None
    with pytest.raises(FileNotFoundError):
        store.local_path("m/1.0.0/model.safetensors")


def test_swap_creates_only_when_absent_and_replaces_only_what_was_compared(s3_url: str) -> None:
    store = S3Store(s3_url)
    assert store.swap("m/index.json", b"one", None)
    assert not store.swap("m/index.json", b"two", None)
    assert not store.swap("m/index.json", b"two", b"stale")
    assert store.swap("m/index.json", b"two", b"one")
    assert not store.swap("gone/index.json", b"x", b"one")
    assert store.read("m/index.json") == b"two"


def test_of_racing_swaps_from_one_state_exactly_one_wins(s3_url: str) -> None:
    store = S3Store(s3_url)
    store.put_bytes("m/index.json", b"0")
    barrier = threading.Barrier(6)
    wins: list[bool] = []

    def writer(n: int) -> None:
        own = S3Store(s3_url)
        barrier.wait()
        wins.append(own.swap("m/index.json", str(n).encode(), b"0"))

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(1, 7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert wins.count(True) == 1
    assert store.read("m/index.json") != b"0"


def test_list_names_what_is_directly_under_a_prefix(s3_url: str) -> None:
    store = S3Store(s3_url)
    store.put_bytes("a/index.json", b"{}")
    store.put_bytes("a/1.0.0/manifest.json", b"{}")
    store.put_bytes("b/index.json", b"{}")
    assert store.list("") == ["a", "b"]
    assert store.list("a") == ["1.0.0", "index.json"]
    assert store.list("nothing") == []


def test_put_file_uploads_and_local_path_downloads_into_the_cache(
    s3_url: str, tmp_path: Path
) -> None:
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights" * 1000)
    store.put_file("m/1.0.0/model.safetensors", source)
    path = store.local_path("m/1.0.0/model.safetensors")
    assert path.read_bytes() == source.read_bytes()
    assert path.is_relative_to(tmp_path / "cache" / store.bucket / "team" / "registry")


def test_the_cache_is_refreshed_when_the_remote_object_changes(
    s3_url: str, s3_server: S3Server, tmp_path: Path
) -> None:
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    store.put_bytes("m/1.0.0/model.pt2", b"first")
    assert store.local_path("m/1.0.0/model.pt2").read_bytes() == b"first"
    s3_server.client().put_object(
        Bucket=store.bucket, Key="team/registry/m/1.0.0/model.pt2", Body=b"second"
    )
    assert store.local_path("m/1.0.0/model.pt2").read_bytes() == b"second"


def test_a_cached_copy_altered_on_disk_is_downloaded_again(s3_url: str, tmp_path: Path) -> None:
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    store.put_bytes("m/1.0.0/model.pt2", b"genuine")
    store.local_path("m/1.0.0/model.pt2").write_bytes(b"altered")
    assert store.local_path("m/1.0.0/model.pt2").read_bytes() == b"genuine"


def test_a_missing_bucket_is_one_clear_error(s3_env: dict[str, str]) -> None:
    with pytest.raises(S3BucketNotFoundError, match="'no-such-bucket' does not exist"):
        S3Store("s3://no-such-bucket/registry").read("m/index.json")


def test_an_unreachable_endpoint_is_one_clear_error(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FRAMEWORM_S3_ENDPOINT_URL", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(S3UnreachableError, match="cannot reach the S3 endpoint"):
        S3Store("s3://bucket/registry").list("")


def test_credentials_in_the_endpoint_url_are_not_in_the_error(
    s3_env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore's message quotes the URL whole, and the error reaches the server's log."""
    url = f"http://admin:s3cr3t@127.0.0.1:{free_port()}"
    monkeypatch.setenv("FRAMEWORM_S3_ENDPOINT_URL", url)
    with pytest.raises(S3UnreachableError, match="cannot reach the S3 endpoint") as caught:
        S3Store("s3://bucket/registry").list("")
    assert "s3cr3t" not in str(caught.value) and "admin" not in str(caught.value)
    assert "***@127.0.0.1" in str(caught.value)


def test_s3_errors_are_registry_errors() -> None:
    assert issubclass(S3UnreachableError, RegistryError)


def test_a_conditional_write_whose_answer_was_lost_counts_as_written(s3_url: str) -> None:
    """botocore sends a PUT again when its answer is lost (a reset, a 5xx after the write);
    the copy fails its condition (412), and the move S3 had made was reported as a lost race,
    "nothing was written": an operator retrying a rollback went back two versions."""
    store = S3Store(s3_url)
    store.put_bytes("m/index.json", b"one")
    put = store._s3.put_object

    def answer_lost(**request: object) -> object:
        put(**request)  # done; its answer lost on the way back
        return put(**request)  # botocore's retry

    store._s3.put_object = answer_lost
    assert store.swap("m/index.json", b"two", b"one")
    assert store.swap("m/new.json", b"first", None)
    assert not store.swap("m/index.json", b"three", b"one")  # a real lost race stays one
    assert (store.read("m/index.json"), store.read("m/new.json")) == (b"two", b"first")


def test_a_retried_write_refused_after_another_writer_is_reported_as_unknown(
    s3_url: str,
) -> None:
    """The first try landed, another writer moved the object on, then botocore's retry was
    refused: this was reported as "nothing was written" (a retried rollback went back two
    versions). Whether it was applied cannot be known: the error says so."""
    store = S3Store(s3_url)
    store.put_bytes("m/index.json", b"one")
    put = store._s3.put_object

    def overtaken(**request: object) -> object:
        put(**request)  # done; its answer lost
        put(Bucket=request["Bucket"], Key=request["Key"], Body=b"another writer's")
        try:
            return put(**request)  # botocore's retry, refused
        except ClientError as exc:
            exc.response["ResponseMetadata"]["RetryAttempts"] = 1
            raise

    store._s3.put_object = overtaken
    with pytest.raises(S3OutcomeUnknownError, match="may have been applied"):
        store.swap("m/index.json", b"two", b"one")


def test_an_upload_that_s3_refuses_is_one_clear_error(
    s3_env: dict[str, str], tmp_path: Path
) -> None:
    """boto3's upload_file wraps the request's error in S3UploadFailedError, which escaped as a
    traceback (and stopped `registry push --all` at the first model)."""
    source = tmp_path / "weights.bin"
    source.write_bytes(b"weights")
    store = S3Store("s3://no-such-bucket/registry", cache_dir=tmp_path / "cache")
    with pytest.raises(S3BucketNotFoundError, match="'no-such-bucket' does not exist"):
        store.put_file("m/1.0.0/model.safetensors", source)


def test_an_object_of_another_size_is_refused_before_it_is_downloaded(
    s3_url: str, tmp_path: Path
) -> None:
    """An object of 10 GB put there by mistake was downloaded whole, then read into memory,
    before its sha256 refused it; the size is in the manifest."""
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    store.put_bytes("m/1.0.0/model.pt2", b"x" * 1000)
    with pytest.raises(ArtefactSizeError, match="it is 1000 bytes, registered as 10"):
        store.local_path("m/1.0.0/model.pt2", size=10)
    assert not list((tmp_path / "cache").rglob("model.pt2*"))  # nothing was downloaded
    assert store.local_path("m/1.0.0/model.pt2", size=1000).read_bytes() == b"x" * 1000


def test_a_killed_downloads_temporary_file_is_removed_by_the_next_download(
    s3_url: str, tmp_path: Path
) -> None:
    """A download killed by SIGKILL, a deadline or an eviction skips its cleanup: its partial
    file stayed in the cache for good, and GB-sized ones filled the volume."""
    store = S3Store(s3_url, cache_dir=tmp_path / "cache")
    store.put_bytes("m/1.0.0/model.pt2", b"genuine")
    folder = tmp_path / "cache" / store.bucket / "team" / "registry" / "m" / "1.0.0"
    folder.mkdir(parents=True)
    stale = folder / ".model.pt2.k1ll3d_0.tmp"
    stale.write_bytes(b"partial")
    other = folder / ".model.pt2.bak.k1ll3d_0.tmp"  # another key's download: left alone
    other.write_bytes(b"")
    assert store.local_path("m/1.0.0/model.pt2").read_bytes() == b"genuine"
    assert not stale.exists()
    assert [p.name for p in folder.glob("*.tmp")] == [other.name]
