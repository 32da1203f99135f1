"""Marks every test by its folder (unit, integration, e2e, load) so `-m` selects them."""

from __future__ import annotations

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
FOLDER_MARKS = {"unit", "integration", "e2e", "gates", "deploy"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = item.path.relative_to(TESTS).parts[0]
        if folder in FOLDER_MARKS:
            item.add_marker(getattr(pytest.mark, folder))
