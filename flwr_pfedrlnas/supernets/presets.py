"""CPU-sized knobs of the built-in supernet families (shared by tests and scripts)."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["CPU_PRESETS", "cpu_preset"]

# Per built-in family: knobs for a 1-channel 32x32 input (the embedded, padded
# Fashion-MNIST) and 10 classes, small enough to build and train on a CPU. No
# preset has a dead dimension (choices building identical subnets; a test checks).
CPU_PRESETS: Mapping[str, Mapping[str, Any]] = MappingProxyType(
    {
        "mobilenetv3": {
            "width_mult": 0.35,
            "num_stages": 3,
            "input_resolution": 32,
            "in_channels": 1,
            "num_classes": 10,
            # At width 0.35 the stages have at most 8, 16 and 32 channels, and
            # widths round to multiples of 8: 0.65 and 0.8 give 8, 16 and 24,
            # the same subnets as 1.0 (stages 1, 2) or as each other (stage 3).
            "width_choices": [1.0],
        },
        "nasvit": {
            "width_mult": 0.25,
            "num_conv_stages": 2,
            "num_vit_stages": 1,
            "resolution_choices": [24, 32],
            "in_channels": 1,
            "num_classes": 10,
            "conv_depth_choices": [[1, 2], [1, 2]],
            "vit_depth_choices": [[1, 2]],
            "head_width_choices": [256, 320],
        },
        "darts": {"init_channels": 4, "num_cells": 3, "in_channels": 1, "num_classes": 10},
        "elastic-cnn": {"in_channels": 1, "num_classes": 10},
    }
)


def cpu_preset(name: str) -> dict[str, Any]:
    """A fresh copy of the CPU-sized knobs of the built-in family ``name``.

    Raises ``ValueError`` naming the unknown family and the known ones.
    """
    if name not in CPU_PRESETS:
        raise ValueError(
            f"no CPU preset for supernet family {name!r}; known: {sorted(CPU_PRESETS)}"
        )
    return copy.deepcopy(dict(CPU_PRESETS[name]))
