"""Dead dimensions (choices that build the same subnet) are found and refused."""

from __future__ import annotations

import pytest

from flwr_pfedrlnas.supernets import (
    CPU_PRESETS,
    check_dimensions,
    cpu_preset,
    dead_dimensions,
    get_supernet,
)

# The CPU preset of mobilenetv3 before the fix: at width 0.35 the stage widths round
# to multiples of 8, so 0.65, 0.8 and 1.0 give 8, 8, 8 (stage 1) and 16, 16, 16 (stage 2).
OLD_MOBILENETV3_PRESET = {
    "width_mult": 0.35,
    "num_stages": 3,
    "input_resolution": 32,
    "in_channels": 1,
    "num_classes": 10,
}


def test_old_mobilenetv3_preset_is_refused_naming_the_dimensions():
    with pytest.raises(ValueError) as err:
        get_supernet("mobilenetv3", refuse_dead_dimensions=True, **OLD_MOBILENETV3_PRESET)
    message = str(err.value)
    assert "'stage1.width'" in message and "[0.65, 0.8, 1.0]" in message
    assert "'stage2.width'" in message
    # Stage 3 (max 32 channels): 0.65 and 0.8 both give 24, 1.0 gives 32.
    assert "'stage3.width': choices [0.65, 0.8] build" in message
    assert "'stage1.kernel'" not in message and "'stage1.expand'" not in message
    family = get_supernet("mobilenetv3", **OLD_MOBILENETV3_PRESET)  # opt-in: still builds
    assert dead_dimensions(family) == {
        "stage1.width": [[0.65, 0.8, 1.0]],
        "stage2.width": [[0.65, 0.8, 1.0]],
        "stage3.width": [[0.65, 0.8]],
    }


def test_only_the_identical_stage_is_named():
    # base width 4: stage 1 has round(4 * 0.5) = round(4 * 0.6) = 2 channels either way,
    # stage 2 has 4 or 5: only stage 1's width is dead.
    family = get_supernet("elastic-cnn", base_width=4, width_choices=[0.5, 0.6])
    assert dead_dimensions(family) == {"stage1.width": [[0.5, 0.6]]}
    with pytest.raises(ValueError, match=r"'stage1\.width': choices \[0\.5, 0\.6\]"):
        check_dimensions(family)


def test_weightless_choices_that_differ_are_not_dead():
    # NASViT's resolution has no weights (the subnet resizes its input): the subnet's
    # own settings tell the choices apart, not its tensor shapes.
    family = get_supernet("nasvit", **cpu_preset("nasvit"))
    assert "resolution" not in dead_dimensions(family)


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n == "darts" else n for n in sorted(CPU_PRESETS)],
)
def test_no_cpu_preset_has_a_dead_dimension(name):
    family = get_supernet(name, refuse_dead_dimensions=True, **cpu_preset(name))
    assert dead_dimensions(family) == {}
