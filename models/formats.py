"""Loading an artefact into a runnable model, safely, by format.

- safetensors + family (default): tensors only, no code, no pickle.
- torch_export (.pt2): the archive is inspected before torch sees it, and refused when any
  entry would need unpickling (torch 2.13's loader falls back to full unpickling
  for those). The bytes checked are the bytes loaded: no second read of the file.
- torchscript: carries code and has no safe loader, so it loads only when the manifest says the
  artefact is trusted.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
from safetensors.torch import load as load_safetensors
from torch import nn

from models.errors import ArtefactError
from models.families import build_model
from models.manifest import ModelManifest, Signature
from models.tensors import FLOAT_DTYPES, TORCH_DTYPES, example_inputs, generate

Forward = Callable[..., Any]


class LoadedModel:
    """A model on a device, called with tensors in signature order, returning outputs in order."""

    def __init__(self, manifest: ModelManifest, module: Forward, device: torch.device) -> None:
        self.manifest = manifest
        self.device = device
        self._module: Forward | None = module

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        if self._module is None:
            raise RuntimeError(f"{self.manifest.name} {self.manifest.version} was released")
        on_device = [t.to(self.device, non_blocking=True) for t in inputs]
        with torch.inference_mode():
            result = self._module(*on_device)
        outputs = list(result) if isinstance(result, tuple | list) else [result]
        if len(outputs) != len(self.signature.outputs):
            raise ArtefactError(
                f"model returned {len(outputs)} outputs, its signature declares "
                f"{len(self.signature.outputs)}"
            )
        return outputs

    def use_channels_last(self, rtol: float = 1e-4, atol: float = 1e-5) -> bool:
        """Store 2-D convolution weights channels-last (NHWC) where that leaves outputs alone.

        oneDNN's CPU convolutions work on NHWC natively; given NCHW weights they reorder weights
        and activations on every call. On the benchmark CNN (one core) NHWC is 1.2x faster at
        batch 8 to 32 and 1.06x at batch 1. A model whose code assumes NCHW strides (`.view()`
        on a convolution's output, say) fails or changes in NHWC, so the switch is kept only
        when a forward pass on random inputs still runs and gives the NCHW outputs; otherwise
        the module goes back as it was. Modules with no 4-D parameter, and TorchScript, are left
        alone. True when the model now runs channels-last.
        """
        module = self._module
        if (
            not isinstance(module, nn.Module)
            or isinstance(module, torch.jit.ScriptModule)
            or not any(p.dim() == 4 for p in module.parameters())
        ):
            return False
        inputs = [
            generate(spec, 2, seed=0) if spec.dtype in FLOAT_DTYPES else example
            for spec, example in zip(
                self.signature.inputs, example_inputs(self.signature, 2), strict=True
            )
        ]
        before = self.forward(inputs)
        # Module.to takes memory_format at run time (4-D tensors only); its stubs leave it out.
        module.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        try:
            after = self.forward(inputs)
            kept = all(
                b.shape == a.shape
                and b.dtype == a.dtype
                and (torch.allclose(b, a, rtol, atol) if b.is_floating_point() else b.equal(a))
                for b, a in zip(before, after, strict=True)
            )
        except RuntimeError:  # e.g. a .view() that NHWC strides do not allow
            kept = False
        if not kept:
            module.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
        return kept

    def release(self) -> None:
        """Drop the weights; the device memory is returned once the last batch is done."""
        self._module = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def load_model(manifest: ModelManifest, data: bytes, device: torch.device) -> LoadedModel:
    """Build a runnable model from an artefact's verified bytes."""
    loader = _LOADERS[manifest.format]
    return LoadedModel(manifest, loader(manifest, data, device), device)


def _load_safetensors(manifest: ModelManifest, data: bytes, device: torch.device) -> Forward:
    if manifest.family is None:
        raise ArtefactError("a safetensors artefact needs a model family")
    module = build_model(manifest.family, manifest.family_config)
    try:
        state = load_safetensors(data)
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ArtefactError(
            f"weights do not fit family {manifest.family!r} with its config: {_first_line(exc)}"
        ) from None
    return module.to(device).eval()


def _load_torch_export(manifest: ModelManifest, data: bytes, device: torch.device) -> Forward:
    refuse_pickled_entries(data)
    try:
        program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # torch raises many types for a malformed archive
        raise ArtefactError(f"not a loadable torch.export archive: {_first_line(exc)}") from None
    # An exported program is already in inference form: GraphModule.eval() is not supported.
    return program.module().to(device)


def _load_torchscript(manifest: ModelManifest, data: bytes, device: torch.device) -> Forward:
    if not manifest.trusted:
        raise ArtefactError("TorchScript artefacts load only when registered as trusted")
    try:
        module: Forward = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data), map_location=device
        )
    except RuntimeError as exc:
        raise ArtefactError(f"not a loadable TorchScript archive: {_first_line(exc)}") from None
    if isinstance(module, nn.Module):
        module.eval()
    return module


_LOADERS: dict[str, Callable[[ModelManifest, bytes, torch.device], Forward]] = {
    "safetensors": _load_safetensors,
    "torch_export": _load_torch_export,
    "torchscript": _load_torchscript,
}


def refuse_pickled_entries(data: bytes) -> None:
    """Raise ArtefactError unless every entry of a .pt2 archive loads without unpickling."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ArtefactError("not a torch.export archive (not a zip file)") from None
    with archive:
        names = archive.namelist()
        if not any(n.endswith("/archive_format") for n in names):
            raise ArtefactError(
                "legacy torch.export archive: its state is pickled; re-export with torch>=2.6"
            )
        for name in names:
            base = name.rsplit("/", 1)[-1]
            if "/data/weights/" in name or "/data/constants/" in name:
                if base.endswith("_config.json"):
                    _check_payload_config(name, archive.read(name))
                elif base.endswith(".pt") or base.startswith(("custom_obj", "opaque_obj")):
                    raise ArtefactError(f"archive entry {base} needs unpickling; refused")
            elif "/data/sample_inputs/" in name:
                # torch loads these with weights_only=True and falls back to full unpickling.
                try:
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise ArtefactError(f"archive entry {base} needs unpickling; refused") from None


def _check_payload_config(name: str, raw: bytes) -> None:
    try:
        config = json.loads(raw)["config"]
    except (ValueError, KeyError, TypeError):
        raise ArtefactError(f"archive entry {name} is malformed") from None
    for fqn, meta in config.items():
        if not isinstance(meta, dict) or meta.get("use_pickle") or "tensor_meta" not in meta:
            raise ArtefactError(f"archive tensor {fqn!r} is stored pickled; refused")


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
                f"{_first_line(exc)}{hint}"
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
