"""On the CPU a convolutional model is served channels-last unless the setting turns it off."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.integration.app.apps import app_settings, running_app


@pytest.mark.parametrize("enabled", [True, False])
def test_the_demo_cnn_is_served_channels_last_on_the_cpu(
    seeded_registry: Path, enabled: bool
) -> None:
    settings = app_settings(seeded_registry, device="cpu", cpu_channels_last=enabled)
    with running_app(settings) as client:  # ready: loaded, warm, golden checks passed
        runner = client.state["host"].runner
        weights = [p for p in runner.model._module.parameters() if p.dim() == 4]

    assert weights
    # The last convolution has several input channels, so the two layouts differ for it.
    assert weights[-1].is_contiguous(memory_format=torch.channels_last) is enabled
    assert weights[-1].is_contiguous() is not enabled
