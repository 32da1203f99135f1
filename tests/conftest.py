"""Marks every test by its folder (unit, integration, e2e, load) so `-m` selects them; fixtures
every folder uses."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import closed_port

TESTS = Path(__file__).parent
FOLDER_MARKS = {"unit", "integration", "e2e", "gates", "deploy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKS:
            item.add_marker(getattr(pytest.mark, folder))


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A port nothing listens on for the whole test (see `closed_port`)."""
    with closed_port() as port:
        yield port
