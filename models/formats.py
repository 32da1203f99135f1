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
import json
import math
import re
import zipfile
from collections.abc import Callable, Sequence
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from torch import nn

from models.errors import ArtefactError, first_line
from models.families import build_model
from models.manifest import ModelManifest, Signature
from models.pt2_ops import refuse_unsafe_ops
from models.pt2_program import check_attribute_path, refuse_code_in_program
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
        program = load_pt2(io.BytesIO(data)).exported_programs[_PT2_MODEL]
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


# The entries torch.export.save (torch 2.13) writes for one program, below the archive's one
# top-level folder: metadata, the program as JSON, its sample inputs, and tensors as raw bytes
# described by a payload config. Everything else is refused rather than judged: legacy pickled
# state (data/weights/model.pt), custom and opaque objects (pickled), AOTInductor libraries
# (native code), extra files, other programs. [0-9], not \d, which matches non-ASCII digits.
_PT2_MODEL = "model"
_PT2_ENTRY = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    r"|models/model\.json|data/sample_inputs/model\.pt"
    r"|data/weights/(model_weights_config\.json|weight_[0-9]+)"
    r"|data/constants/(model_constants_config\.json|tensor_[0-9]+)"
)
# Payload config -> the only path_name form its entries may have. torch picks the loader from
# the path_name (custom_obj_* and opaque_obj_* are unpickled) and joins it to the folder, so a
# path_name is checked, not just the entry names.
_PT2_PAYLOADS = {
    "data/weights/model_weights_config.json": re.compile(r"weight_[0-9]+"),
    "data/constants/model_constants_config.json": re.compile(r"tensor_[0-9]+"),
}
_PT2_SAMPLE_INPUTS = "data/sample_inputs/model.pt"


def refuse_pickled_entries(data: bytes) -> None:
    """Raise ArtefactError unless the .pt2 archive has only entries that load without unpickling
    (and a program whose loading runs none of its text: models/pt2_program.py).

    torch reads the archive through its own zip reader (miniz), which finds entries relative
    to the first entry's top-level folder and matches names case-insensitively. So every entry
    must sit under that one folder, and no name may appear twice, even in another case: else
    the entry checked here need not be the one torch loads.
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, ValueError):
        raise ArtefactError("not a torch.export archive (not a zip file)") from None
    with archive:
        names = archive.namelist()
        root = names[0].split("/", 1)[0] + "/" if names else ""
        if (
            not root.isascii()
            or not root.isprintable()
            or root in ("/", "./", "../")
            or "\\" in root
            or not all(n.startswith(root) for n in names)
        ):
            raise ArtefactError("not a torch.export archive: entries are not in one folder")
        if len({n.lower() for n in names}) != len(names):
            raise ArtefactError("torch.export archive has duplicate entries; refused")
        # torch.export.save stores every entry as it is: a deflated one is a way to make a
        # small upload inflate a thousandfold.
        if any(
            i.compress_type != zipfile.ZIP_STORED or i.compress_size != i.file_size
            for i in archive.infolist()
        ):
            raise ArtefactError("torch.export archive has compressed entries; refused")
        entries = {n[len(root) :] for n in names}
        if "archive_format" not in entries:
            raise ArtefactError(
                "legacy torch.export archive: its state is pickled; re-export with torch>=2.6"
            )
        if f"models/{_PT2_MODEL}.json" not in entries:
            raise ArtefactError(f"torch.export archive has no program models/{_PT2_MODEL}.json")
        # torch's loader turns parts of the program's JSON into Python code and runs it.
        refuse_code_in_program(_read(archive, f"{root}models/{_PT2_MODEL}.json"))
        for entry in sorted(entries):
            if not _PT2_ENTRY.fullmatch(entry):
                # !r: a zip entry name may hold a newline or escape codes; the message is one line.
                raise ArtefactError(
                    f"archive entry {entry!r} is not a plain tensor or JSON; refused"
                )
        _check_payloads(archive, root, entries)


def _check_payloads(archive: zipfile.ZipFile, root: str, entries: set[str]) -> None:
    """The tensors' configs (no pickled or oddly stored tensor) and the sample inputs."""
    for config, path_name in _PT2_PAYLOADS.items():
        if config in entries:
            folder = config.rsplit("/", 1)[0] + "/"
            sizes = {
                e[len(folder) :]: archive.getinfo(root + e).file_size
                for e in entries
                if e.startswith(folder)
            }
            _check_payload_config(config, _read(archive, root + config), path_name, sizes)
    if _PT2_SAMPLE_INPUTS in entries:
        # torch loads these with weights_only=True and falls back to full unpickling.
        sample_inputs = _read(archive, root + _PT2_SAMPLE_INPUTS)
        try:
            torch.load(io.BytesIO(sample_inputs), weights_only=True)
        except Exception:
            raise ArtefactError(
                f"archive entry {_PT2_SAMPLE_INPUTS} needs unpickling; refused"
            ) from None


def _read(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except Exception:  # zipfile raises many types: bad CRC, encryption, unknown compression
        raise ArtefactError(f"archive entry {name!r} cannot be read") from None


def _check_payload_config(
    name: str, raw: bytes, path_name: re.Pattern[str], sizes: dict[str, int]
) -> None:
    try:
        config = json.loads(raw)["config"]
        items = config.items()
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ArtefactError(f"archive entry {name} is malformed") from None
    for fqn, meta in items:
        check_attribute_path(fqn)  # where torch attaches the tensor, written into generated code
        # `is not False`: torch takes any truthy value (the string "false" too) as "unpickle".
        if (
            not isinstance(meta, dict)
            or meta.get("use_pickle") is not False
            or not isinstance(meta.get("tensor_meta"), dict)
        ):
            raise ArtefactError(f"archive tensor {fqn!r} is stored pickled; refused")
        if not isinstance(meta.get("path_name"), str) or not path_name.fullmatch(meta["path_name"]):
            raise ArtefactError(
                f"archive tensor {fqn!r} is not stored as a plain tensor (path_name "
                f"{str(meta.get('path_name'))[:80]!r}); refused"
            )
        # torch makes an empty entry a tensor of zeros of the size the config declares.
        if sizes.get(meta["path_name"]) == 0 and _elements(meta["tensor_meta"]) != 0:
            raise ArtefactError(f"archive tensor {fqn!r} has no bytes for its size; refused")


def _elements(tensor_meta: dict[str, Any]) -> int | None:
    """The element count a tensor's metadata declares; None when not a plain list of ints."""
    dims = tensor_meta.get("sizes")
    if not isinstance(dims, list) or not all(
        isinstance(d, dict) and isinstance(d.get("as_int"), int) for d in dims
    ):
        return None
    return math.prod(int(d["as_int"]) for d in dims)
