"""scripts/architecture_personal.py: own-architecture advantage and its decomposition."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from script_loader import load_script


def _module():
    return load_script("architecture_personal")


def test_decompose_hand_computed():
    parts = _module().decompose([[0.9, 0.7], [0.5, 0.5]])
    assert parts["client"] == pytest.approx([0.15, -0.15])
    assert parts["common"] == pytest.approx([0.05, -0.05])
    assert parts["personal"] == pytest.approx(np.array([[0.05, -0.05], [-0.05, 0.05]]))


def test_own_advantage_hand_computed():
    acc = [[0.9, 0.7, 0.6], [0.5, 0.8, 0.5], [0.4, 0.4, 0.4]]
    # 0.9 - 0.65, 0.8 - 0.5, 0.4 - 0.4
    assert _module().own_advantage(acc) == pytest.approx((0.25 + 0.3 + 0.0) / 3)
    with pytest.raises(ValueError, match=r"\(2, 3\)"):
        _module().own_advantage([[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]])


def _rows(mats):
    rows = []
    for half, mat in mats.items():
        for i, row in enumerate(mat):
            for k, value in enumerate(row):
                arch = f"deployed-{k}" if k < len(mat) else f"random-{k - len(mat)}"
                rows.append({"client-id": str(i), "arch-id": arch, "half": half, "accuracy": value})
    return pd.DataFrame(rows)


def test_split_half_variance_removes_noise_that_differs_between_halves():
    whole = np.array([[0.9, 0.7, 0.6], [0.5, 0.8, 0.5]])
    noise = np.array([[0.02, -0.02, 0.0], [-0.02, 0.02, 0.0]])  # personal-shaped
    module = _module()
    same = module.summarise(_rows({"whole": whole, "A": whole, "B": whole}))
    noisy = module.summarise(_rows({"whole": whole, "A": whole + noise, "B": whole - noise}))
    personal = module.decompose(whole)["personal"]
    assert same["personal variance"] == pytest.approx(np.mean(personal**2))
    assert same["personal variance, split-half"] == pytest.approx(same["personal variance"])
    e = module.decompose(noise)["personal"]
    assert noisy["personal variance, split-half"] == pytest.approx(
        np.mean(personal**2) - np.mean(e**2)
    )
    # Common part untouched by personal-shaped noise.
    assert noisy["common variance, split-half"] == pytest.approx(same["common variance"])
    assert same["own advantage (whole)"] == pytest.approx(((0.9 - 0.7) + (0.8 - 0.5)) / 2)
    assert same["clients"] == 2 and same["architectures"] == 3
