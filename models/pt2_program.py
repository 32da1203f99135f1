"""The parts of a torch.export program's JSON that torch turns into Python code as it loads.

torch's loader (torch 2.13) does not only build a graph from `models/model.json`:
- each size expression (`expr_str`) is evaluated with `sympy.sympify` (models/pt2_symbols.py);
- each of `guards_code` is pasted into generated source and executed, on every forward pass;
- the names of the graph's values, the module's `forward_arg_names`, the keys of its input
  spec and the attribute paths of its parameters, buffers and constants are pasted into
  generated source (an input's name as a parameter of `forward`, a path's segments into
  `getattr(base, "SEGMENT")`);
- the input and output specs name types that torch's spec reader imports by module name.

So these are checked, on the JSON, before torch reads it: `guards_code` may hold only the
guards torch.export writes for inputs that share a dimension (the usual multi-input model:
`L['x'].size()[0] == L['w'].size()[0]`, a comparison of two sizes, matched whole), names must
be Python identifiers, and specs may hold only tuples, lists and dicts of tensors. The graph's
nodes are checked after loading (models/pt2_ops.py).
"""

from __future__ import annotations

import json
import keyword
import re
from typing import Any

from models.errors import ArtefactError
from models.pt2_symbols import refuse_unsafe_expressions

# Tables of the graph keyed by a value's name.
VALUE_TABLES = frozenset(
    {"tensor_values", "sym_int_values", "sym_bool_values", "sym_float_values", "custom_obj_values"}
)
# What torch.export writes when inputs share a dimension: one input's size equals another's.
_SIZE = r"L\['[A-Za-z_][A-Za-z0-9_]{0,127}'\]\.size\(\)\[(?:0|[1-9][0-9]?)\]"  # ASCII only
SHARED_SIZE_GUARD = re.compile(rf"{_SIZE} == {_SIZE}")
# A spec node's type: a tensor (None), or a container torch.export writes for one.
SPEC_TYPES = frozenset({None, "builtins.tuple", "builtins.list", "builtins.dict"})


def refuse_code_in_program(program_json: bytes) -> None:
    """Raise ArtefactError unless loading the program runs none of the archive's own text."""
    try:
        document = json.loads(program_json)
    except (ValueError, RecursionError):
        raise ArtefactError("the torch.export program is not JSON") from None
    if not isinstance(document, dict):
        raise ArtefactError("the torch.export program is not a JSON object")
    refuse_unsafe_expressions(document)
    guards = document.get("guards_code") or []
    if not isinstance(guards, list) or not all(
        isinstance(guard, str) and SHARED_SIZE_GUARD.fullmatch(guard) for guard in guards
    ):
        raise ArtefactError(
            "the exported program's guards_code holds more than comparisons of input sizes "
            "(Python that torch runs on every call); refused"
        )
    for name in _names(document):
        _check_identifier(name)
    graph_module = document.get("graph_module")
    if not isinstance(graph_module, dict):
        graph_module = {}
    for path in _attribute_paths(graph_module.get("signature")):
        check_attribute_path(path)
    calls = graph_module.get("module_call_graph")
    for entry in calls if isinstance(calls, list) else []:
        call = entry.get("signature") if isinstance(entry, dict) else None
        if isinstance(call, dict):
            for name in call.get("forward_arg_names") or []:
                _check_identifier(name)
            for spec in (call.get("in_spec"), call.get("out_spec")):
                if spec is not None:
                    _check_spec(spec)


def _names(value: Any) -> list[Any]:
    """Every name the graph gives a value (a node, an input, a tensor, a symbol), at any depth:
    torch writes them into generated source, an input's as a parameter of `forward` (where
    `x=__import__(...)` would run as a default value)."""
    names: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("name", "as_name"):
                names.append(item)
            elif key in VALUE_TABLES and isinstance(item, dict):
                names += list(item)
            names += _names(item)
    elif isinstance(value, list):
        for item in value:
            names += _names(item)
    return names


def _attribute_paths(value: Any) -> list[Any]:
    """Every attribute path in the program's signature (`layers.0.weight`: a parameter's, a
    buffer's, a constant's, a mutation's target). torch writes each segment into generated
    source, one that is not an identifier as `getattr(base, "SEGMENT")`, unescaped."""
    paths: list[Any] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if key.endswith("_name") or key == "target":
                paths.append(item)
            else:
                paths += _attribute_paths(item)
    elif isinstance(value, list):
        for item in value:
            paths += _attribute_paths(item)
    return paths


def check_attribute_path(path: Any) -> None:
    """Raise ArtefactError unless `path` is dotted identifiers or indices (`layers.0.weight`)."""
    if not (
        isinstance(path, str)
        and path
        and all(
            (part.isidentifier() and not keyword.iskeyword(part))
            or (part.isascii() and part.isdigit())
            for part in path.split(".")
        )
    ):
        raise ArtefactError(
            f"the exported program names an attribute {str(path)[:80]!r}, which is not a "
            "dotted path of identifiers; refused"
        )


def _check_identifier(name: Any) -> None:
    # "" is a higher-order operator's node, which torch names itself.
    if not (isinstance(name, str) and (name == "" or name.isidentifier())) or keyword.iskeyword(
        name
    ):
        raise ArtefactError(
            f"the exported program names a value {str(name)[:80]!r}, which is not a Python "
            "identifier; refused"
        )


def _check_spec(text: Any) -> None:
    """A pytree spec of tuples, lists and dicts keyed by identifiers, as torch.export writes
    for tensors in and out. torch's spec reader imports any module a spec names (an enum's, a
    defaultdict's factory) and reads attributes from it: os.environ's values came back in an
    error message."""
    try:
        spec = json.loads(text)
    except (TypeError, ValueError, RecursionError):
        raise ArtefactError("the exported program's input or output spec is not JSON") from None
    if not (isinstance(spec, list) and len(spec) == 2 and _plain_spec(spec[1])):
        raise ArtefactError(
            "the exported program's input or output spec holds something other than tuples, "
            "lists and dicts of tensors; refused"
        )


def _plain_spec(node: Any) -> bool:
    if not isinstance(node, dict) or set(node) - {"type", "context", "children_spec"}:
        return False
    kind, context, children = node.get("type"), node.get("context"), node.get("children_spec")
    if kind not in SPEC_TYPES or not isinstance(children, list):
        return False
    if context not in (None, "null"):
        try:
            keys = json.loads(context) if isinstance(context, str) else None
        except (ValueError, RecursionError):
            return False
        if not isinstance(keys, list) or any(
            not isinstance(k, str) or not k.isidentifier() for k in keys
        ):
            return False
    return all(_plain_spec(child) for child in children)
