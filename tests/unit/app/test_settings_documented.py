"""README's configuration table names every setting of app.config.Settings."""

from __future__ import annotations

import re
from pathlib import Path

from app.config import Settings

README = Path(__file__).resolve().parents[3] / "README.md"


def documented() -> set[str]:
    """FRAMEWORM_* names in the Configuration table; `A[_FILE]` and `A / B` rows count each."""
    section = README.read_text(encoding="utf-8").split("## Configuration", 1)[1]
    table = section.split("\n## ", 1)[0]
    names = set()
    for row in table.splitlines():
        if row.startswith("| `FRAMEWORM_"):
            first_cell = row.split("|")[1]
            names |= set(re.findall(r"FRAMEWORM_[A-Z0-9_]+", first_cell.replace("[_FILE]", "")))
    return names


def test_every_setting_is_in_the_configuration_table() -> None:
    settings = {f"FRAMEWORM_{name.upper()}" for name in Settings.model_fields}
    missing = settings - documented()
    assert not missing, f"settings missing from README's Configuration table: {sorted(missing)}"
