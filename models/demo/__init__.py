"""The bundled demo models: a digit classifier, a VAE and its decoder, trained on real digits.

`seed_demo(registry)` registers them from the committed weights; `models/demo/train.py`
re-trains them. See `models/demo/README.md`.
"""

from models.demo.catalog import (
    DEMO_MODELS,
    DEMO_VERSION,
    DemoModel,
    demo_metrics,
    demo_model,
    sample_png,
    seed_demo,
)

__all__ = [
    "DEMO_MODELS",
    "DEMO_VERSION",
    "DemoModel",
    "demo_metrics",
    "demo_model",
    "sample_png",
    "seed_demo",
]
