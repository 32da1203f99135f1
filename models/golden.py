"""Golden checks: inputs with the outputs a model version must give for them."""

from __future__ import annotations

import torch

from models.errors import GoldenCheckError, RegistryError, first_line
from models.formats import LoadedModel
from models.manifest import GoldenCheck, Signature
from models.tensors import from_value, generate


def golden_inputs(signature: Signature, check: GoldenCheck) -> list[torch.Tensor]:
    try:
        tensors = []
        batch = int(check.parameters.get("batch_size", 1))
        for spec in signature.inputs:
            if spec.name in check.inputs:
                tensors.append(from_value(check.inputs[spec.name], spec))
            elif spec.generate:
                tensors.append(generate(spec, batch, check.parameters.get("seed")))
            else:
                raise GoldenCheckError(f"golden check {check.name!r} lacks input {spec.name!r}")
    # The check's JSON holds values of any type; torch refuses some with RuntimeError (a seed
    # that is no integer, a negative batch size), numbers too large with OverflowError.
    except (ValueError, TypeError, RuntimeError, OverflowError) as exc:
        raise GoldenCheckError(
            f"golden check {check.name!r}: bad input: {first_line(exc)}"
        ) from None
    return tensors


def run_golden_checks(model: LoadedModel) -> None:
    """Raise GoldenCheckError naming the first check and output that does not match."""
    signature = model.signature
    for check in model.manifest.golden:
        inputs = golden_inputs(signature, check)
        try:
            outputs = model.forward(inputs)
        except RegistryError:
            raise
        except Exception as exc:  # the user's model code: any failure fails the check, in a line
            raise GoldenCheckError(
                f"golden check {check.name!r}: the model fails on its inputs: {first_line(exc)}"
            ) from None
        for spec, actual in zip(signature.outputs, outputs, strict=True):
            if spec.name not in check.expected:
                continue
            try:
                expected = from_value(check.expected[spec.name], spec)
            except (ValueError, TypeError) as exc:
                raise GoldenCheckError(
                    f"golden check {check.name!r}: bad expected {spec.name!r}: {first_line(exc)}"
                ) from None
            actual_cpu = actual.detach().to("cpu")
            if actual_cpu.shape != expected.shape:
                raise GoldenCheckError(
                    f"golden check {check.name!r}: output {spec.name!r} has shape "
                    f"{tuple(actual_cpu.shape)}, expected {tuple(expected.shape)}"
                )
            if not torch.allclose(
                actual_cpu.to(expected.dtype), expected, atol=check.atol, rtol=check.rtol
            ):
                # In float64: bool tensors cannot be subtracted, and integers could wrap.
                worst = (actual_cpu.double() - expected.double()).abs().max().item()
                raise GoldenCheckError(
                    f"golden check {check.name!r}: output {spec.name!r} differs by up to "
                    f"{worst:.3g} (atol {check.atol}, rtol {check.rtol})"
                )
