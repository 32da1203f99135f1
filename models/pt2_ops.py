"""What a torch.export program may call: tensor math, never files, printing or Python.

An archive that holds no pickle can still run more than tensor math. torch's loader resolves
each node's target by name from `torch`, `operator` or `math`, so a hand-edited program may
call `torch.ops.aten.from_file` (read any file the server can, such as the pepper or the cloud
credentials, and hand its bytes back as an output), `torch.load` (unpickle a file) or any other
callable in torch. So every node of the loaded program, and of its subgraphs (the branches of
`cond`, the bodies of loops), is checked before anything runs: ATen and prims operators except
those that touch files, print or change process-wide state; the control-flow operators
torch.export emits; and the arithmetic on symbolic sizes. Anything else is refused. (The size
expressions themselves are text torch evaluates while loading: models/pt2_symbols.py.)
"""

from __future__ import annotations

import math
import operator
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from models.errors import ArtefactError
from models.pt2_program import check_attribute_path

if TYPE_CHECKING:
    from torch.export import ExportedProgram

# Operator namespaces of tensor math. Others (custom ops, c10d collectives, profiler, quantized
# engines) are not what an exported model of this server needs, and are not vetted.
TENSOR_NAMESPACES = frozenset({"aten", "prims"})
# ATen operators that read or write files, print, or change process-wide state (the random
# generator other models draw from, cuFFT's plan cache): never part of a model's forward.
IO_OPERATORS = frozenset(
    {
        *("from_file", "save", "_print", "warn"),
        *("manual_seed", "seed", "_cufft_set_plan_cache_max_size", "_cufft_clear_plan_cache"),
    }
)
# Control flow torch.export emits as higher-order operators; their bodies are checked too.
CONTROL_FLOW = frozenset(
    {
        "cond",
        "while_loop",
        "map_impl",
        "scan",
        "associative_scan",
        "invoke_subgraph",
        "wrap_with_set_grad_enabled",
        "wrap_with_autocast",
    }
)
# Python functions an exported graph calls on sizes and scalars (torch's serializer's list, and
# getitem for operators with several outputs); not `operator` as a whole, whose call,
# attrgetter and methodcaller reach any object.
SIZE_ARITHMETIC = frozenset(
    {
        *(operator.eq, operator.ne, operator.le, operator.ge, operator.lt, operator.gt),
        *(operator.neg, operator.pos, operator.mul, operator.add, operator.sub, operator.pow),
        *(operator.floordiv, operator.mod, operator.truediv, operator.and_, operator.or_),
        *(operator.lshift, operator.rshift, operator.getitem, math.trunc),
        *(torch.sym_not, torch.sym_int, torch.sym_float, torch.sym_ite, torch.sym_max),
        *(torch.sym_min, torch.sym_sqrt),
    }
)


def refuse_unsafe_ops(program: ExportedProgram) -> None:
    """Raise ArtefactError naming the first node that calls something other than tensor math."""
    for module in program.graph_module.modules():
        if not isinstance(module, fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op == "get_attr":
                check_attribute_path(node.target)  # written into the generated code
            if node.op in ("placeholder", "get_attr", "output"):
                continue
            if node.op != "call_function" or not _allowed(node.target):
                raise ArtefactError(
                    f"the exported program calls {_name_of(node.target)!r} (node {node.name!r}), "
                    "which is not tensor math; refused"
                )
            # A control-flow operator calls what it is handed: its bodies are graphs (get_attr
            # nodes, checked as modules above), never an operator or a function passed in.
            handed = _callable_arguments(node)
            if handed:
                raise ArtefactError(
                    f"the exported program hands {_name_of(handed[0])!r} to node {node.name!r} "
                    "as an argument; refused"
                )


def _allowed(target: Any) -> bool:
    if isinstance(target, torch._ops.OpOverload):
        schema = target._schema
        namespace, _, name = schema.name.partition("::")
        return (
            namespace in TENSOR_NAMESPACES
            and name not in IO_OPERATORS
            and not any(argument.name in ("filename", "path") for argument in schema.arguments)
        )
    if isinstance(target, torch._ops.HigherOrderOperator):
        return target.name() in CONTROL_FLOW  # type: ignore[no-untyped-call]
    return target in SIZE_ARITHMETIC


def _callable_arguments(node: fx.Node) -> list[Any]:
    """The node's arguments, nested ones too, that are callables (a graph's node is a value)."""
    handed: list[Any] = []

    def note(value: Any) -> Any:
        if callable(value) and not isinstance(value, fx.Node):
            handed.append(value)
        return value

    fx.node.map_aggregate((node.args, node.kwargs), note)
    return handed


def _name_of(target: Any) -> str:
    if isinstance(target, torch._ops.OpOverload):
        return str(target)  # aten.from_file.default
    if isinstance(target, torch._ops.HigherOrderOperator):
        return f"higher_order.{target.name()}"  # type: ignore[no-untyped-call]
    if isinstance(target, str):  # a name torch's loader could not resolve
        return target[:120]
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", None)
    return f"{module}.{name}" if name else type(target).__name__
