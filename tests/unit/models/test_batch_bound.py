"""A .pt2 whose batch dimension is capped at export serves batches past the cap, in slices."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.errors import ArtefactError
from models.pt2_batch import batch_bound
from models.registry import ModelRegistry
from tests.support.artefacts import TINY_SIGNATURE, tiny_mlp
from tests.support.capped_batch import write_capped_mlp


@pytest.mark.parametrize("batch", [1, 3, 4, 7, 32])
def test_a_model_exported_with_a_capped_batch_answers_any_batch_size(
    registry: ModelRegistry, tmp_path: Path, batch: int
) -> None:
    """Exported with Dim(max=3), its program fails on 4 items (`x.size()[0] <= 3`); a server
    forms batches up to FRAMEWORM_MAX_BATCH_SIZE (32), and warms up at 1, 2, 4, ... 32."""
    module = write_capped_mlp(tmp_path / "capped.pt2", max_batch=3)
    manifest = registry.register(
        "capped", "1.0.0", tmp_path / "capped.pt2", format="torch_export", signature=TINY_SIGNATURE
    )
    model = registry.load(manifest)
    assert model.max_batch == 3
    x = torch.randn(batch, 4, generator=torch.Generator().manual_seed(batch))
    (y,) = model.forward([x])
    with torch.inference_mode():
        assert torch.allclose(y, module(x), atol=1e-6)


class _TwoInputs(torch.nn.Module):
    def forward(self, x: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x * 2, w * 3


def test_the_bound_is_the_smallest_over_the_inputs_and_none_when_uncapped() -> None:
    example = (torch.zeros(2, 4), torch.zeros(2, 4))

    def bound(x_dim: torch.export.Dim, w_dim: torch.export.Dim) -> int | None:
        shapes = ({0: x_dim}, {0: w_dim})
        return batch_bound(torch.export.export(_TwoInputs(), example, dynamic_shapes=shapes))

    assert bound(torch.export.Dim("a", max=5), torch.export.Dim("b", max=3)) == 3
    assert bound(torch.export.Dim("a"), torch.export.Dim("b", max=9)) == 9
    assert bound(torch.export.Dim("a"), torch.export.Dim("b")) is None


def test_a_fixed_batch_has_no_bound_and_is_still_refused(
    registry: ModelRegistry, tmp_path: Path
) -> None:
    """Slicing would serve a program exported for one item (no dynamic_shapes) an item a time."""
    program = torch.export.export(tiny_mlp(), (torch.zeros(1, 4),))
    assert batch_bound(program) is None
    torch.export.save(program, str(tmp_path / "fixed.pt2"))
    with pytest.raises(ArtefactError, match="exported with a fixed batch size"):
        registry.register(
            "fixed",
            "1.0.0",
            tmp_path / "fixed.pt2",
            format="torch_export",
            signature=TINY_SIGNATURE,
        )
