"""The architecture policy: eq. 6 gradient, Adam / SGD ascent, sampling, state."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from flwr_pfedrlnas.core.policy import ArchitecturePolicy, softmax
from flwr_pfedrlnas.core.search_space import Dimension, SearchSpace

SPACE = SearchSpace([Dimension("kernel", (3, 5, 7)), Dimension("width", (0.5, 1.0))])


def test_gradient_is_reward_times_onehot_minus_probabilities():
    policy = ArchitecturePolicy(SPACE)
    # alpha = [0, ln 2, ln 3] -> p = [1/6, 2/6, 3/6]; alpha = [0, 0] -> p = [1/2, 1/2]
    policy.alpha["kernel"] = np.log(np.array([1.0, 2.0, 3.0]))
    grads = policy.gradient({"kernel": 5, "width": 0.5}, reward=0.6)
    np.testing.assert_allclose(grads["kernel"], 0.6 * np.array([-1 / 6, 1 - 2 / 6, -3 / 6]))
    np.testing.assert_allclose(grads["width"], 0.6 * np.array([0.5, -0.5]))


def test_sgd_step_ascends_by_lr_times_gradient():
    policy = ArchitecturePolicy(SPACE, lr=0.1, optimizer="sgd")
    policy.update({"kernel": 7, "width": 1.0}, reward=-2.0)
    # uniform p: kernel grad = -2 * ([0,0,1] - 1/3), width grad = -2 * ([0,1] - 1/2)
    np.testing.assert_allclose(policy.alpha["kernel"], 0.1 * -2 * np.array([-1 / 3, -1 / 3, 2 / 3]))
    np.testing.assert_allclose(policy.alpha["width"], 0.1 * -2 * np.array([-0.5, 0.5]))
    assert policy.steps == 1


def test_first_adam_step_by_hand():
    policy = ArchitecturePolicy(SPACE, lr=0.5, betas=(0.5, 0.999), eps=1e-8)
    policy.update({"kernel": 3, "width": 0.5}, reward=0.3)
    # Step 1: m_hat = g, v_hat = g^2 -> delta = lr * g / (|g| + eps)
    g = 0.3 * np.array([2 / 3, -1 / 3, -1 / 3])
    np.testing.assert_allclose(policy.alpha["kernel"], 0.5 * g / (np.abs(g) + 1e-8), rtol=1e-12)


def test_adam_matches_torch_adam_on_reinforce_loss():
    """Ascending r*log p with our Adam equals torch's Adam minimising -r*log p."""
    rng = np.random.default_rng(0)
    policy = ArchitecturePolicy(SPACE, lr=0.5, betas=(0.5, 0.999))
    logits = {d.name: torch.zeros(len(d), dtype=torch.float64, requires_grad=True) for d in SPACE}
    opt = torch.optim.Adam(logits.values(), lr=0.5, betas=(0.5, 0.999), eps=1e-8)
    for _ in range(6):
        arch = SPACE.sample(rng)
        reward = float(rng.normal())
        idx = SPACE.indices(arch)
        opt.zero_grad()
        loss = -reward * sum(torch.log_softmax(logits[n], 0)[i] for n, i in idx.items())
        loss.backward()
        opt.step()
        policy.update(arch, reward)
        for name in logits:
            np.testing.assert_allclose(policy.alpha[name], logits[name].detach().numpy(), rtol=1e-9)


def test_probabilities_and_sampling_frequencies():
    policy = ArchitecturePolicy(SPACE)
    policy.alpha["kernel"] = np.array([0.0, 1.0, 2.0])
    expected = np.exp([0.0, 1.0, 2.0]) / np.exp([0.0, 1.0, 2.0]).sum()
    np.testing.assert_allclose(policy.probabilities()["kernel"], expected)
    rng = np.random.default_rng(1)
    draws = [policy.sample(rng)["kernel"] for _ in range(6000)]
    freq = np.array([draws.count(k) for k in (3, 5, 7)]) / len(draws)
    np.testing.assert_allclose(freq, expected, atol=0.02)
    assert policy.argmax() == {"kernel": 7, "width": 0.5}  # width tie -> first
    assert math.isclose(policy.log_prob({"kernel": 7, "width": 1.0}), math.log(expected[2] * 0.5))


def test_reinforce_learns_the_rewarded_choice():
    policy = ArchitecturePolicy(SPACE, lr=0.2)
    rng = np.random.default_rng(3)
    for _ in range(60):
        arch = policy.sample(rng)
        reward = 1.0 if arch["kernel"] == 5 else -0.2
        policy.update(arch, reward)
    assert policy.argmax()["kernel"] == 5
    assert policy.probabilities()["kernel"][1] > 0.8


def test_state_round_trip_continues_identically():
    a = ArchitecturePolicy(SPACE)
    rng = np.random.default_rng(5)
    steps = [(SPACE.sample(rng), float(rng.normal())) for _ in range(6)]
    for arch, r in steps[:3]:
        a.update(arch, r)
    b = ArchitecturePolicy(SPACE)
    b.load_state_dict(a.state_dict())
    for arch, r in steps[3:]:
        a.update(arch, r)
        b.update(arch, r)
    for name in a.alpha:
        assert np.array_equal(a.alpha[name], b.alpha[name])
    assert a.steps == b.steps == 6


def test_bad_input_leaves_policy_unchanged():
    policy = ArchitecturePolicy(SPACE)
    policy.update({"kernel": 3, "width": 0.5}, 0.5)
    before = policy.state_dict()
    with pytest.raises(ValueError, match="reward"):
        policy.update({"kernel": 3, "width": 0.5}, float("nan"))
    with pytest.raises(ValueError, match="'kernel' has value 9"):
        policy.update({"kernel": 9, "width": 0.5}, 0.5)
    with pytest.raises(ValueError, match="alpha.kernel"):
        policy.load_state_dict(
            {**before, "alpha": {"kernel": [0, float("inf"), 0], "width": [0, 0]}}
        )
    assert policy.state_dict() == before


def test_softmax_is_stable():
    np.testing.assert_allclose(softmax(np.array([1000.0, 1000.0])), [0.5, 0.5])
