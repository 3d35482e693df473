"""scripts/architecture_gain.py: the search gain split into kept blocks and architecture."""

from __future__ import annotations

import pandas as pd
import pytest
from script_loader import load_script


def _module():
    return load_script("architecture_gain")


def test_random_architectures_take_the_deployed_keep_choices_and_nothing_else():
    module = _module()
    drawn = {"stage1.kernel": 5, "keep.classifier": "shared", "keep.last-stage": "personal"}
    deployed = {"stage1.kernel": 3, "keep.classifier": "personal", "keep.last-stage": "shared"}
    assert module.with_keep_choices(drawn, deployed) == {
        "stage1.kernel": 5,
        "keep.classifier": "personal",
        "keep.last-stage": "shared",
    }
    assert module.needs_store(deployed) and not module.needs_store({"keep.classifier": "shared"})


def test_the_gains_are_per_client_differences_of_means():
    # Client a: deployed 0.9, own-keep randoms 0.7 and 0.8 (0.75), randoms 0.5 and 0.6 (0.55).
    # Client b: deployed 0.6, own-keep random 0.6, random 0.2.
    rows = pd.DataFrame(
        [
            ("a", "deployed", 0.9),
            ("a", "random, own keep", 0.7),
            ("a", "random, own keep", 0.8),
            ("a", "random", 0.5),
            ("a", "random", 0.6),
            ("b", "deployed", 0.6),
            ("b", "random, own keep", 0.6),
            ("b", "random", 0.2),
        ],
        columns=["client-id", "subnet", "accuracy"],
    )
    s = _module().summarise(rows)
    assert s["deployed"] == pytest.approx(0.75)
    assert s["architecture gain"] == pytest.approx(((0.9 - 0.75) + 0.0) / 2)
    assert s["keep gain"] == pytest.approx(((0.75 - 0.55) + (0.6 - 0.2)) / 2)
    assert s["clients"] == 2
