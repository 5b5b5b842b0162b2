"""Small helpers shared by tests that build predictors around fake or tiny networks."""

from __future__ import annotations

from typing import Any

from nets.spec import ModelSpec


def spec_of(config: dict[str, Any]) -> ModelSpec:
    """A spec from a flat dict whose ``num_classes`` counts output channels (1: a binary model)."""
    values = dict(config)
    if values.get("num_classes") == 1:
        values.update(num_classes=2, task="binary")
    return ModelSpec.from_dict({"version": 2, **values})
