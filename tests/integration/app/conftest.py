"""Fixtures: a temp registry seeded with the demo models, and apps serving them."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from models.demo import seed_demo
from models.registry import ModelRegistry
from tests.integration.app.apps import AppClient, app_settings, running_app


@pytest.fixture(scope="session")
def seeded_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("registry")
    seed_demo(ModelRegistry(path))
    return path


@pytest.fixture(scope="module")
def cnn(seeded_registry: Path) -> Iterator[AppClient]:
    with running_app(app_settings(seeded_registry, model="cnn-digits")) as client:
        yield client


@pytest.fixture(scope="module")
def decoder(seeded_registry: Path) -> Iterator[AppClient]:
    with running_app(app_settings(seeded_registry, model="vae-digits-decoder")) as client:
        yield client
