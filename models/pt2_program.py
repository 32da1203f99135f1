"""The parts of a torch.export program's JSON that torch turns into Python code as it loads.

torch's loader (torch 2.13) does not only build a graph from `models/model.json`:
- each size expression (`expr_str`) is evaluated with `sympy.sympify` (models/pt2_symbols.py);
- each of `guards_code` is pasted into generated source and executed, on every forward pass;
- the module's `forward_arg_names` and the keys of its input spec are pasted into the
  generated `forward`'s source.

So these are checked, on the JSON, before torch reads it: `guards_code` must be empty (what
torch.export writes; the server checks inputs against the signature itself), and the names
must be Python identifiers. The graph's nodes are checked after loading (models/pt2_ops.py).
"""

from __future__ import annotations

import json
import keyword
from typing import Any

from models.errors import ArtefactError
from models.pt2_symbols import refuse_unsafe_expressions


def refuse_code_in_program(program_json: bytes) -> None:
    """Raise ArtefactError unless loading the program runs none of the archive's own text."""
    try:
        document = json.loads(program_json)
    except (ValueError, RecursionError):
        raise ArtefactError("the torch.export program is not JSON") from None
    if not isinstance(document, dict):
        raise ArtefactError("the torch.export program is not a JSON object")
    refuse_unsafe_expressions(document)
    if document.get("guards_code") not in (None, []):
        raise ArtefactError(
            "the exported program carries guards_code, Python that torch runs on every call; "
            "refused"
        )
    graph_module = document.get("graph_module")
    calls = graph_module.get("module_call_graph", []) if isinstance(graph_module, dict) else []
    for entry in calls if isinstance(calls, list) else []:
        signature = entry.get("signature") if isinstance(entry, dict) else None
        if isinstance(signature, dict):
            _refuse_unsafe_names(signature)


def _refuse_unsafe_names(signature: dict[str, Any]) -> None:
    names = list(signature.get("forward_arg_names") or [])
    spec = signature.get("in_spec")
    if spec is not None:
        try:
            names += list(_spec_keys(json.loads(spec)))
        except (TypeError, ValueError, RecursionError):
            raise ArtefactError("the exported program's input spec is not JSON") from None
    for name in names:
        if not (isinstance(name, str) and name.isidentifier() and not keyword.iskeyword(name)):
            raise ArtefactError(
                f"the exported program names an input {str(name)[:80]!r}, which is not a "
                "Python identifier; refused"
            )


def _spec_keys(node: Any) -> list[Any]:
    """The keys (dict keys, field names) a serialized pytree spec holds, at any depth."""
    keys: list[Any] = []
    if isinstance(node, list):
        for item in node:
            keys += _spec_keys(item)
    elif isinstance(node, dict):
        context = node.get("context")
        if isinstance(context, str) and context not in ("null", ""):
            parsed = json.loads(context)
            keys += parsed if isinstance(parsed, list) else [parsed]
        for child in node.get("children_spec") or []:
            keys += _spec_keys(child)
    return keys
