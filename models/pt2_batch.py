"""The largest batch a torch.export program accepts in one call.

A program exported with `dynamic_shapes={"x": {0: Dim("b", max=64)}}` carries the bound in its
range constraints, and the exported module guards every call with it (`x.size()[0] <= 64`):
a larger batch fails. A server may form larger batches than that (FRAMEWORM_MAX_BATCH_SIZE, or
one request that runs alone), so the loaded model runs them in slices of the bound
(models/formats.py, LoadedModel.forward).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch.utils._sympy.value_ranges import bound_sympy

if TYPE_CHECKING:
    from torch.export import ExportedProgram


def batch_bound(program: ExportedProgram) -> int | None:
    """The smallest upper bound of dimension 0 over the program's inputs; None when unbounded.

    None too when an input's dimension 0 is fixed: that program takes one batch size only, and
    slicing would hide it; check_signature refuses it, saying so.
    """
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    bounds: list[int] = []
    for name in program.graph_signature.user_inputs:
        value = placeholders[name].meta.get("val")
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            continue
        size = value.shape[0]
        if not isinstance(size, torch.SymInt):
            return None
        # bound_sympy: dimension 0 may be an expression of the exported Dims, not one of them.
        upper = bound_sympy(size.node.expr, program.range_constraints).upper
        if upper.is_Integer:  # a number: torch's int_oo, unbounded, is none (nor sympy's oo)
            bounds.append(int(upper))
    return min(bounds, default=None)
