"""How S3Store names S3's refusals: error mapping only, so botocore's Stubber answers.

The S3 server the integration tests run (moto) does not enforce permissions, so a real 403
cannot be produced there; everything else about S3Store runs against that server in
tests/integration/s3/.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from botocore.stub import Stubber

from models.s3 import S3AccessDeniedError, S3Store
from tests.support.s3 import DUMMY_CREDENTIALS


def test_access_denied_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused_port: int
) -> None:
    for name, value in DUMMY_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{refused_port}")  # never reached
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.delenv("FRAMEWORM_S3_ENDPOINT_URL", raising=False)
    store = S3Store("s3://bucket/registry")
    with Stubber(store._s3) as stub:
        stub.add_client_error("get_object", service_error_code="AccessDenied", http_status_code=403)
        with pytest.raises(S3AccessDeniedError, match="access denied to s3://"):
            store.read("m/index.json")
        stub.assert_no_pending_responses()
