"""One real `frameworm serve` process shared by the e2e modules that only send requests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import ServerProcess, serve


@pytest.fixture(scope="package")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A ready server on a fresh registry (it seeds the demo models itself)."""
    with serve(tmp_path_factory.mktemp("e2e-server")) as running:
        yield running
