"""Loading an artefact into a runnable model, safely, by format.

- safetensors + family (default): tensors only, no code, no pickle.
- torch_export (.pt2): the archive is inspected before torch sees it and refused unless it has
  exactly the layout torch.export.save writes for one program, with raw tensors only: torch
  2.13's loader unpickles (or runs native code from) anything else. It is then loaded with
  torch's current-format loader alone, never torch.export.load, which retries a failed archive
  as the legacy, pickled format. The bytes checked are the bytes loaded: no second read.
- torchscript: carries code and has no safe loader, so it loads only when the manifest says the
  artefact is trusted.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from models.errors import ArtefactError, first_line
from models.families import build_model
from models.manifest import ModelManifest, Signature
from models.pt2_archive import PT2_MODEL, refuse_pickled_entries
from models.pt2_ops import refuse_unsafe_ops
from models.tensors import FLOAT_DTYPES, example_inputs, generate

Forward = Callable[..., Any]


class LoadedModel:
    """A model on a device, called with tensors in signature order, returning outputs in order.

    `max_batch`: the most items the artefact takes in one call (a .pt2 exported with a capped
    batch Dim); None when there is no such bound. `forward` takes any batch size regardless.
    """

    def __init__(
        self,
        manifest: ModelManifest,
        module: Forward,
        device: torch.device,
        max_batch: int | None = None,
    ) -> None:
        self.manifest = manifest
        self.device = device
        self.max_batch = max_batch
        self._module: Forward | None = module

    @property
    def signature(self) -> Signature:
        return self.manifest.signature

    def forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        cap = self.max_batch
        if cap is not None and inputs and len(inputs[0]) > cap:
            # Batches are formed up to FRAMEWORM_MAX_BATCH_SIZE or a request's size, which may
            # pass the bound the program was exported with: run it in slices of the bound.
            parts = [
                self._forward([t[i : i + cap] for t in inputs])
                for i in range(0, len(inputs[0]), cap)
            ]
            return [torch.cat(outs) for outs in zip(*parts, strict=True)]
        return self._forward(inputs)

    def _forward(self, inputs: Sequence[torch.Tensor]) -> list[torch.Tensor]:
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
        if not all(isinstance(out, torch.Tensor) for out in outputs):
            raise ArtefactError("model returned something other than tensors")
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
        """Drop the weights; call it once no forward pass runs. Device memory goes back too."""
        module, self._module = self._module, None
        if isinstance(module, nn.Module) and not isinstance(module, torch.jit.ScriptModule):
            _drop_tensors(module)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


def _drop_tensors(module: nn.Module) -> None:
    """Unhook every tensor a module holds: parameters, buffers and plain tensor attributes.

    Dropping the last reference is not enough for a module in reference cycles (a torch.export
    program's is) once the server has frozen its startup heap (`gc.freeze()`): the collector
    never visits frozen objects, and the first version's weights would stay for good.
    """
    for sub in module.modules():
        sub._parameters.clear()
        sub._buffers.clear()
        for name in [n for n, value in vars(sub).items() if isinstance(value, torch.Tensor)]:
            delattr(sub, name)


def load_model(manifest: ModelManifest, data: bytes, device: torch.device) -> LoadedModel:
    """Build a runnable model from an artefact's verified bytes."""
    module, max_batch = _LOADERS[manifest.format](manifest, data, device)
    return LoadedModel(manifest, module, device, max_batch)


# A loader gives the module and the most items it takes in one call (None: no bound).
_Loaded = tuple[Forward, int | None]


def _load_safetensors(manifest: ModelManifest, data: bytes, device: torch.device) -> _Loaded:
    if manifest.family is None:
        raise ArtefactError("a safetensors artefact needs a model family")
    module = build_model(manifest.family, manifest.family_config)
    try:
        state = load_safetensors(data)
    except SafetensorError as exc:  # not a safetensors file: "header too large", ...
        raise ArtefactError(f"not a safetensors file: {first_line(exc)}") from None
    try:
        module.load_state_dict(state, strict=True)
    except (RuntimeError, ValueError) as exc:
        raise ArtefactError(
            f"weights do not fit family {manifest.family!r} with its config: {first_line(exc)}"
        ) from None
    return module.to(device).eval(), None


def _load_torch_export(manifest: ModelManifest, data: bytes, device: torch.device) -> _Loaded:
    # Imported here: torch.export's serialisation takes 2 s to import, a third of a server's
    # cold start, for a format most registries never hold.
    from torch.export.pt2_archive._package import load_pt2

    from models.pt2_batch import batch_bound

    refuse_pickled_entries(data)
    try:
        # load_pt2, not torch.export.load: on a RuntimeError the latter retries the bytes as a
        # legacy archive, whose state it unpickles. Here any failure is final.
        program = load_pt2(io.BytesIO(data)).exported_programs[PT2_MODEL]
    except Exception as exc:  # torch raises many types (AssertionError too) for a bad archive
        raise ArtefactError(f"not a loadable torch.export archive: {first_line(exc)}") from None
    refuse_unsafe_ops(program)  # before anything of it runs
    try:
        # An exported program is already in inference form: GraphModule.eval() is not supported.
        module: Forward = program.module().to(device)
    except Exception as exc:
        raise ArtefactError(f"not a loadable torch.export archive: {first_line(exc)}") from None
    return module, batch_bound(program)


def _load_torchscript(manifest: ModelManifest, data: bytes, device: torch.device) -> _Loaded:
    if not manifest.trusted:
        raise ArtefactError("TorchScript artefacts load only when registered as trusted")
    try:
        module: Forward = torch.jit.load(  # type: ignore[no-untyped-call]
            io.BytesIO(data), map_location=device
        )
    except RuntimeError as exc:
        raise ArtefactError(f"not a loadable TorchScript archive: {first_line(exc)}") from None
    if isinstance(module, nn.Module):
        module.eval()
    return module, None


_LOADERS: dict[str, Callable[[ModelManifest, bytes, torch.device], _Loaded]] = {
    "safetensors": _load_safetensors,
    "torch_export": _load_torch_export,
    "torchscript": _load_torchscript,
}
