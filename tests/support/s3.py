"""A real S3-compatible server for tests: moto's S3 app on 127.0.0.1 and a free port.

It serves one request at a time. Real S3 checks a conditional write's precondition and writes
atomically; moto's handler checks and then writes, so with concurrent handler threads two
conditional PUTs holding the same ETag could both pass. Serialising requests gives the
atomicity a real server guarantees, and a client that did not send the conditions would still
let both writers win.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import make_server

from tests.support import free_port

DUMMY_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    def env(self, cache_home: Path) -> dict[str, str]:
        """Variables that point boto3 (in this process or a child) at this server only."""
        return {
            **DUMMY_CREDENTIALS,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_CONFIG_FILE": str(cache_home / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(cache_home / "no-aws-credentials"),
            "XDG_CACHE_HOME": str(cache_home),
        }

    def client(self) -> Any:
        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name="us-east-1",
            aws_access_key_id="testing",
            aws_secret_access_key="testing",
        )

    def new_bucket(self) -> str:
        name = f"frameworm-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


class _QuietHandler(MotoRequestHandler):
    # HTTP/1.0: each request closes its connection, so an idle keep-alive client cannot hold
    # the single-threaded server.
    protocol_version = "HTTP/1.0"

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


@contextmanager
def run_s3_server() -> Iterator[S3Server]:
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server(
        "127.0.0.1", free_port(), app, threaded=False, request_handler=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield S3Server(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        thread.join(timeout=10)
