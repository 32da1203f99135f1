"""What a loaded model must show before a registry takes it or moves a stage onto it: it keeps
the batch and fits its signature at several batch sizes, and, declared deterministic, it is."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from models.errors import ArtefactError, first_line
from models.formats import LoadedModel
from models.tensors import TORCH_DTYPES, example_inputs


def check_deterministic(model: LoadedModel) -> None:
    """A model declared deterministic answers the same input alike twice: its answers are
    cached and replayed (the result cache), so a random one would replay one draw for good.
    Inputs of ones, not zeros: random masks (dropout left on) vanish on zeros."""
    inputs = [torch.ones_like(tensor) for tensor in example_inputs(model.signature, 2)]
    first, second = model.forward(inputs), model.forward(inputs)
    for spec, a, b in zip(model.signature.outputs, first, second, strict=True):
        floating = a.is_floating_point() or a.is_complex()
        same = torch.isclose(a, b, rtol=0, atol=0, equal_nan=True).all() if floating else a.equal(b)
        if not same:
            raise ArtefactError(
                f"declared deterministic, but output {spec.name!r} differs between two runs on "
                "the same inputs: its cached answers would replay one draw; register it "
                "without --deterministic"
            )


def check_signature(model: LoadedModel, batch_sizes: Sequence[int] = (1, 3)) -> None:
    """Run zero inputs at several batch sizes; outputs must keep the batch and match the spec.

    This is what catches a .pt2 exported without `dynamic_shapes`: its batch size is fixed.
    """
    signature = model.signature
    for batch in batch_sizes:
        try:
            outputs = model.forward(example_inputs(signature, batch))
        except ArtefactError:
            raise
        except Exception as exc:  # any failure of the user's model is an artefact problem
            hint = ""
            if model.manifest.format == "torch_export":
                hint = (
                    " (was it exported with a fixed batch size? export with "
                    "dynamic_shapes marking dimension 0 of every input as torch.export.Dim)"
                )
            raise ArtefactError(
                f"model fails on a batch of {batch} inputs of its signature: "
                f"{first_line(exc)}{hint}"
            ) from None
        for spec, out in zip(signature.outputs, outputs, strict=True):
            expected = (batch, *spec.shape[1:])
            if tuple(out.shape) != expected:
                raise ArtefactError(
                    f"output {spec.name!r} has shape {tuple(out.shape)} for a batch of {batch}, "
                    f"the signature says {expected}"
                )
            if out.dtype != TORCH_DTYPES[spec.dtype]:
                raise ArtefactError(
                    f"output {spec.name!r} is {out.dtype}, the signature says {spec.dtype}"
                )
