"""What a server imports at start: the cold start target (5 s) leaves no room for the unused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]


def test_the_app_does_not_import_torch_export_until_a_pt2_artefact_is_loaded() -> None:
    # torch.export's serialisation took 2 s of a 3.3 s cold start, for a format most
    # registries never hold.
    code = "import sys, app.main; print('torch.export.pt2_archive' in sys.modules)"
    result = subprocess.run(  # nosec B603  # this interpreter, fixed arguments
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"
