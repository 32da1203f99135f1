"""What a torch.export (.pt2) archive may hold before torch reads it.

torch 2.13's loader unpickles (or runs native code from) anything but the layout
torch.export.save writes for one program with raw tensors, so that layout is all that passes.
Every check reads the archive as torch will: through torch's own zip reader (miniz), refused
unless Python's zipfile finds the same entries at the same places. The two parse a zip
differently (zipfile shifts every offset when the central directory is not where the end record
says; miniz takes offsets as written), so one file could hold two archives: a plain one for
the checks and a pickled one for torch.
"""

from __future__ import annotations

import io
import json
import math
import re
import struct
import zipfile
from typing import Any

import torch

from models.errors import ArtefactError
from models.pt2_program import check_attribute_path, refuse_code_in_program

# The entries torch.export.save (torch 2.13) writes for one program, below the archive's one
# top-level folder: metadata, the program as JSON, its sample inputs, and tensors as raw bytes
# described by a payload config. Everything else is refused rather than judged: legacy pickled
# state (data/weights/model.pt), custom and opaque objects (pickled), AOTInductor libraries
# (native code), extra files, other programs. [0-9], not \d, which matches non-ASCII digits.
PT2_MODEL = "model"
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
# The sample inputs are flattened by torch's loader: a few shared containers nested deep make a
# tiny pickle a tree of 2**depth leaves (hours of loading). Real ones hold a few tensors.
_SAMPLE_INPUT_NODES = 10_000
# Elements an archive's tensors may declare past their bytes (expanded tensors), in all.
_EXPANDED_ELEMENTS = 2**24
_END_RECORD = zipfile._EndRecData  # type: ignore[attr-defined]  # where the end record points
_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, ..., name length, extra length


class _Zip:
    """One zip archive as torch reads it, its entries named below the top-level folder."""

    def __init__(self, data: bytes, what: str) -> None:
        try:
            archive = zipfile.ZipFile(io.BytesIO(data))
            end = _END_RECORD(io.BytesIO(data))
        except (zipfile.BadZipFile, ValueError, NotImplementedError):
            raise ArtefactError(f"not a {what} (not a zip file)") from None
        with archive:
            infos = archive.infolist()
        # zipfile reads the central directory found before the end record, shifting offsets by
        # any gap; torch's reader reads it where the end record says. Two directories could
        # then give one entry two compression methods: only one directory is accepted.
        if end is None or archive.start_dir != end[zipfile._ECD_OFFSET]:  # type: ignore[attr-defined]
            raise ArtefactError(f"{what} has data before its central directory; refused")
        names = [i.filename for i in infos]
        root = names[0].split("/", 1)[0] + "/" if names else ""
        # torch finds entries relative to the first entry's folder and matches names without
        # regard to case: else the entry checked need not be the one torch loads.
        if (
            not root.isascii()
            or not root.isprintable()
            or root in ("/", "./", "../")
            or "\\" in root
            or not all(n.startswith(root) for n in names)
        ):
            raise ArtefactError(f"not a {what}: entries are not in one folder")
        if len({n.lower() for n in names}) != len(names):
            raise ArtefactError(f"{what} has duplicate entries; refused")
        # torch.save and torch.export.save store every entry as it is: a deflated one is a way
        # to make a small upload inflate a thousandfold.
        if any(
            i.compress_type != zipfile.ZIP_STORED or i.compress_size != i.file_size for i in infos
        ):
            raise ArtefactError(f"{what} has compressed entries; refused")
        self.what, self._data, self._root, self._infos = what, data, root, infos
        self.sizes = {i.filename[len(root) :]: i.file_size for i in infos}  # as zipfile reads it
        self._reader: Any = None

    def open_as_torch_reads_it(self) -> None:
        """Read on through torch's own zip reader, refused unless it finds every entry where
        zipfile does: the same header, the same bytes, the same size."""
        try:
            # Any: torch's stubs lack the offset methods (torch 2.13).
            reader: Any = torch._C.PyTorchFileReader(io.BytesIO(self._data))
            records = reader.get_all_records()
            places = {
                name: (
                    reader.get_record_header_offset(name),
                    reader.get_record_offset(name),
                    reader.get_record_size(name),
                )
                for name in records
            }
        except (RuntimeError, ValueError):  # ValueError: a name that is not UTF-8
            raise ArtefactError(f"not a {self.what} (torch cannot read it)") from None
        mine = {
            i.filename[len(self._root) :]: (
                i.header_offset,
                _data_offset(self._data, i),
                i.file_size,
            )
            for i in self._infos
        }
        if len(records) != len(places) or places != mine:
            raise ArtefactError(f"{self.what} reads differently to torch's zip reader; refused")
        self._reader = reader

    def read(self, name: str) -> bytes:
        try:
            return bytes(self._reader.get_record(name))
        except (RuntimeError, ValueError):
            raise ArtefactError(f"{self.what} entry {name!r} cannot be read") from None


def _data_offset(data: bytes, info: zipfile.ZipInfo) -> int:
    """Where an entry's bytes begin, by its local header (as both readers find them)."""
    start = info.header_offset
    header = data[start : start + _LOCAL_HEADER.size]
    if len(header) < _LOCAL_HEADER.size or not header.startswith(b"PK\x03\x04"):
        return -1  # no local header there: cannot match torch's offset
    _, name_length, extra_length = _LOCAL_HEADER.unpack(header)
    return start + _LOCAL_HEADER.size + int(name_length) + int(extra_length)


def refuse_pickled_entries(data: bytes) -> None:
    """Raise ArtefactError unless the .pt2 archive has only entries that load without unpickling
    (and a program whose loading runs none of its text: models/pt2_program.py)."""
    archive = _Zip(data, "torch.export archive")
    entries = set(archive.sizes)
    if "archive_format" not in entries:
        raise ArtefactError(
            "legacy torch.export archive: its state is pickled; re-export with torch>=2.6"
        )
    archive.open_as_torch_reads_it()
    if f"models/{PT2_MODEL}.json" not in entries:
        raise ArtefactError(f"torch.export archive has no program models/{PT2_MODEL}.json")
    for entry in sorted(entries):
        if not _PT2_ENTRY.fullmatch(entry):
            # !r: a zip entry name may hold a newline or escape codes; the message is one line.
            raise ArtefactError(f"archive entry {entry!r} is not a plain tensor or JSON; refused")
    # torch's loader turns parts of the program's JSON into Python code and runs it.
    refuse_code_in_program(archive.read(f"models/{PT2_MODEL}.json"))
    for config, path_name in _PT2_PAYLOADS.items():
        if config in entries:
            folder = config.rsplit("/", 1)[0] + "/"
            sizes = {e[len(folder) :]: archive.sizes[e] for e in entries if e.startswith(folder)}
            _check_payload_config(config, archive.read(config), path_name, sizes)
    if _PT2_SAMPLE_INPUTS in entries:
        _check_sample_inputs(archive.read(_PT2_SAMPLE_INPUTS))


def _check_sample_inputs(raw: bytes) -> None:
    # torch loads these with weights_only=True and falls back to full unpickling; they are a
    # torch.save archive of their own, read by the same zip reader.
    _Zip(raw, f"torch.save archive in {_PT2_SAMPLE_INPUTS}").open_as_torch_reads_it()
    try:
        value = torch.load(io.BytesIO(raw), weights_only=True)
    except Exception:
        raise ArtefactError(
            f"archive entry {_PT2_SAMPLE_INPUTS} needs unpickling; refused"
        ) from None
    # Walked as torch flattens it: a shared container counts each time it is reached.
    nodes, stack = 0, [value]
    while stack:
        item = stack.pop()
        nodes += 1
        if nodes > _SAMPLE_INPUT_NODES:
            raise ArtefactError(f"archive entry {_PT2_SAMPLE_INPUTS} is too large; refused")
        if isinstance(item, (tuple, list, dict)):
            stack.extend(item.values() if isinstance(item, dict) else item)


def _check_payload_config(
    name: str, raw: bytes, path_name: re.Pattern[str], sizes: dict[str, int]
) -> None:
    try:
        config = json.loads(raw)["config"]
        items = config.items()
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        raise ArtefactError(f"archive entry {name} is malformed") from None
    expanded = 0  # elements declared past the entries' bytes, over the whole config
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
        # torch makes the tensor the config declares over the entry's bytes: an empty entry
        # becomes zeros of that size, and zero strides spread 4 bytes over terabytes, which
        # any copy then materialises. Expanded tensors (`ones(1, 4).expand(256, 4)`) are real
        # exports, so only so many elements past the bytes are allowed.
        elements, stored = _elements(meta["tensor_meta"]), sizes.get(meta["path_name"], 0)
        if elements is not None and stored:
            expanded += max(0, elements - stored)
        if elements is None or (elements and not stored) or expanded > _EXPANDED_ELEMENTS:
            raise ArtefactError(f"archive tensor {fqn!r} has fewer bytes than its size; refused")


def _elements(tensor_meta: dict[str, Any]) -> int | None:
    """The element count a tensor's metadata declares; None when not a plain list of ints."""
    dims = tensor_meta.get("sizes")
    if not isinstance(dims, list) or not all(
        isinstance(d, dict) and isinstance(d.get("as_int"), int) and d["as_int"] >= 0 for d in dims
    ):
        return None
    return math.prod(int(d["as_int"]) for d in dims)
