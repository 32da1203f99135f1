"""A TorchScript version marked trusted in the registry is still refused by a server unless the
server's operator allows TorchScript (FRAMEWORM_ALLOW_TORCHSCRIPT): a registry write must not be
enough to run code on every server."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
import torch

from app.config import Settings
from app.inference.host import ModelHost
from models.errors import ArtefactError
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp


@pytest.fixture
def registry(tmp_path: Path) -> ModelRegistry:
    """A registry whose `scripted` 1.0.0 is a trusted TorchScript artefact in production."""
    path = tmp_path / "m.pt"
    with pytest.warns(DeprecationWarning):
        traced = torch.jit.trace(tiny_mlp(seed=4), torch.zeros(1, 4))  # type: ignore[no-untyped-call]
        torch.jit.save(traced, str(path))
    registry = ModelRegistry(tmp_path / "registry")
    with pytest.warns(DeprecationWarning):
        # The CLI's own register (and check) of a --trusted TorchScript artefact stays allowed.
        registry.register(
            "scripted", "1.0.0", path, format="torchscript", signature=TINY_SIGNATURE, trusted=True
        )
        registry.check("scripted", "1.0.0")
    registry.promote("scripted", "1.0.0", "production")
    return registry


def host(registry: ModelRegistry, *, allow_torchscript: bool = False) -> ModelHost:
    return ModelHost(
        Settings(
            _env_file=None,
            registry=registry.store.url,
            model="scripted",
            device="cpu",
            seed_demo=False,
            warmup=False,
            load_retries=1,
            retain_freed_memory=False,
            allow_torchscript=allow_torchscript,
        ),
        registry,
    )


def test_the_setting_is_off_by_default() -> None:
    assert Settings(_env_file=None).allow_torchscript is False


def test_a_server_refuses_a_trusted_torchscript_version_by_default(
    registry: ModelRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    refusing = host(registry)
    with pytest.raises(ArtefactError, match="FRAMEWORM_ALLOW_TORCHSCRIPT=true"):
        refusing.prepare()
    # As any refused version: the load fails in one line and the server gives up.
    with caplog.at_level(logging.ERROR, logger="frameworm.model"):
        asyncio.run(refusing.start())
    assert refusing.state == "failed"
    assert "ArtefactError" in refusing.reason
    messages = [record.getMessage() for record in caplog.records]
    assert any("scripted 1.0.0 is TorchScript, which carries code: refused" in m for m in messages)
    assert caplog.records and not any(record.exc_info for record in caplog.records)


def test_a_server_that_allows_torchscript_loads_it(registry: ModelRegistry) -> None:
    allowing = host(registry, allow_torchscript=True)
    with pytest.warns(DeprecationWarning):
        runner = allowing.prepare()
    try:
        assert runner.manifest.format == "torchscript"
    finally:
        runner.close()


def test_the_setting_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAMEWORM_ALLOW_TORCHSCRIPT", "true")
    assert Settings(_env_file=None).allow_torchscript is True
