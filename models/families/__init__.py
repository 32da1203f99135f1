"""Architectures served from safetensors weights, chosen by name.

A family builds an `nn.Module` from a JSON-able config; the weights come from the artefact, so
no code is ever loaded from a registry. Forward convention: positional inputs in the
signature's input order; a tensor, or a tuple in the signature's output order.
"""

from __future__ import annotations

import importlib
from typing import Any, Protocol

from torch import nn

from models.errors import ArtefactError, first_line


class FamilyBuilder(Protocol):
    def __call__(self, **config: Any) -> nn.Module: ...


# name -> "module:function", imported lazily so only the chosen family is loaded.
FAMILIES: dict[str, str] = {
    "mlp": "models.families.mlp:build",
    "cnn": "models.families.cnn:build",
    "vae": "models.families.vae:build_vae",
    "vae_decoder": "models.families.vae:build_decoder",
}


def build_model(family: str, config: dict[str, Any]) -> nn.Module:
    if family not in FAMILIES:
        raise ArtefactError(
            f"unknown model family {family!r}; known: {', '.join(sorted(FAMILIES))}"
        )
    module_name, _, attr = FAMILIES[family].partition(":")
    builder: FamilyBuilder = getattr(importlib.import_module(module_name), attr)
    try:
        return builder(**config)
    # A config is data from the registry or the command line: torch and the builders refuse
    # bad values with these (a negative size is a RuntimeError), never as a crash of the caller.
    except (TypeError, ValueError, RuntimeError, OverflowError, IndexError, KeyError) as exc:
        raise ArtefactError(f"bad config for family {family!r}: {first_line(exc)}") from None
