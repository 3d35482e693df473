"""Per-client categorical architecture policy trained with REINFORCE."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Literal

import numpy as np

from flwr_pfedrlnas.core.search_space import Architecture, SearchSpace

__all__ = ["ArchitecturePolicy", "softmax"]

OptimizerName = Literal["adam", "sgd"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable softmax of a 1-D array."""
    z = logits - np.max(logits)
    e = np.exp(z)
    return e / e.sum()


class ArchitecturePolicy:
    """Independent categorical distribution per search dimension.

    ``alpha[d]`` are the logits of dimension ``d``; ``p[d] = softmax(alpha[d])``.
    All logits start at zero (uniform). The REINFORCE gradient of eq. 6,
    ``r * (onehot(choice_d) - p[d])``, is *ascended* with Adam or SGD.

    Parameters
    ----------
    space : SearchSpace
        The dimensions and their choices.
    lr : float (default: 0.5)
        Learning rate of the logits.
    optimizer : {"adam", "sgd"} (default: "adam")
        Adam as in the reference implementation, or plain gradient ascent.
    betas : tuple[float, float] (default: (0.5, 0.999))
        Adam's decay rates.
    eps : float (default: 1e-8)
        Adam's denominator guard.
    """

    def __init__(
        self,
        space: SearchSpace,
        lr: float = 0.5,
        optimizer: OptimizerName = "adam",
        betas: tuple[float, float] = (0.5, 0.999),
        eps: float = 1e-8,
    ) -> None:
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be 'adam' or 'sgd', got {optimizer!r}")
        if not (lr > 0 and math.isfinite(lr)):
            raise ValueError(f"policy lr must be a positive number, got {lr!r}")
        self.space = space
        self.lr = float(lr)
        self.optimizer = optimizer
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.alpha = {d.name: np.zeros(len(d)) for d in space}
        self._m = {d.name: np.zeros(len(d)) for d in space}
        self._v = {d.name: np.zeros(len(d)) for d in space}
        self.steps = 0

    # ---------------------------------------------------------------- queries
    def probabilities(self) -> dict[str, np.ndarray]:
        """``softmax(alpha[d])`` for every dimension."""
        return {name: softmax(a) for name, a in self.alpha.items()}

    def sample(self, rng: np.random.Generator) -> Architecture:
        """Draw one choice per dimension from the policy."""
        probs = self.probabilities()
        return self.space.from_indices(
            [int(rng.choice(len(d), p=probs[d.name])) for d in self.space]
        )

    def argmax(self) -> Architecture:
        """Most probable choice of every dimension (ties: the first)."""
        return self.space.from_indices([int(np.argmax(self.alpha[d.name])) for d in self.space])

    def log_prob(self, arch: Architecture) -> float:
        """``log p(arch)`` under the policy."""
        idx = self.space.indices(arch)
        return float(sum(np.log(p[idx[name]]) for name, p in self.probabilities().items()))

    def entropy(self) -> float:
        """Sum over dimensions of the entropy of each categorical (nats)."""
        total = 0.0
        for p in self.probabilities().values():
            nz = p[p > 0]
            total -= float(np.sum(nz * np.log(nz)))
        return total

    # ---------------------------------------------------------------- update
    def gradient(self, arch: Architecture, reward: float) -> dict[str, np.ndarray]:
        """Eq. 6: ``r * (onehot(choice_d) - softmax(alpha[d]))`` per dimension."""
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward!r}")
        idx = self.space.indices(arch)
        grads = {}
        for name, p in self.probabilities().items():
            onehot = np.zeros_like(p)
            onehot[idx[name]] = 1.0
            grads[name] = reward * (onehot - p)
        return grads

    def entropy_gradient(self) -> dict[str, np.ndarray]:
        """Gradient of each dimension's entropy: ``-p * (log p + H)``."""
        grads = {}
        for name, p in self.probabilities().items():
            logp = np.log(np.maximum(p, np.finfo(float).tiny))
            grads[name] = -p * (logp + float(-np.sum(p * logp)))
        return grads

    def update(
        self, arch: Architecture, reward: float, entropy_bonus: float = 0.0
    ) -> dict[str, np.ndarray]:
        """One ascent step on ``reward * log p(arch)`` (+ ``entropy_bonus * H``).

        ``entropy_bonus`` (ours; 0 = eq. 6 alone) keeps the policy from
        collapsing on a few noisy rewards. Returns the gradient used.
        """
        if not (entropy_bonus >= 0 and math.isfinite(entropy_bonus)):
            raise ValueError(f"entropy_bonus must be >= 0, got {entropy_bonus!r}")
        grads = self.gradient(arch, reward)
        if entropy_bonus:
            bonus = self.entropy_gradient()
            grads = {n: g + entropy_bonus * bonus[n] for n, g in grads.items()}
        self.step(grads)
        return grads

    def max_entropy(self) -> float:
        """Entropy of the uniform policy: sum over dimensions of ``log(choices)``."""
        return float(sum(math.log(len(d)) for d in self.space))

    def step(self, grads: Mapping[str, np.ndarray]) -> None:
        """One ascent step along ``grads`` (per dimension, the logits' shape).

        Nothing changes when the step would make a logit non-finite
        (``FloatingPointError``) or a gradient is missing or misshaped
        (``ValueError`` naming the dimension).
        """
        for name, a in self.alpha.items():
            g = grads.get(name)
            if g is None or np.shape(g) != a.shape:
                raise ValueError(
                    f"gradient of dimension {name!r} is {g!r}, expected shape {a.shape}"
                )
        grads = {n: np.asarray(grads[n], dtype=np.float64) for n in self.alpha}
        self.steps += 1
        if self.optimizer == "sgd":
            new_alpha = {n: self.alpha[n] + self.lr * g for n, g in grads.items()}
            new_m, new_v = self._m, self._v
        else:
            b1, b2 = self.betas
            new_alpha, new_m, new_v = {}, {}, {}
            for name, g in grads.items():
                m = b1 * self._m[name] + (1 - b1) * g
                v = b2 * self._v[name] + (1 - b2) * g * g
                m_hat = m / (1 - b1**self.steps)
                v_hat = v / (1 - b2**self.steps)
                new_alpha[name] = self.alpha[name] + self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
                new_m[name], new_v[name] = m, v
        if not all(np.all(np.isfinite(a)) for a in new_alpha.values()):
            self.steps -= 1
            raise FloatingPointError("policy update produced non-finite logits")
        self.alpha, self._m, self._v = new_alpha, new_m, new_v

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        """JSON-serialisable state: logits, optimiser moments and step count."""
        return {
            "lr": self.lr,
            "optimizer": self.optimizer,
            "betas": list(self.betas),
            "eps": self.eps,
            "steps": self.steps,
            "alpha": {k: v.tolist() for k, v in self.alpha.items()},
            "m": {k: v.tolist() for k, v in self._m.items()},
            "v": {k: v.tolist() for k, v in self._v.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; checks it fits this policy's space."""
        arrays = {}
        for part in ("alpha", "m", "v"):
            src = state[part]
            if set(src) != set(self.alpha):
                raise ValueError(
                    f"policy state '{part}' has dimensions {sorted(src)}, "
                    f"expected {sorted(self.alpha)}"
                )
            arrays[part] = {}
            for name, values in src.items():
                arr = np.asarray(values, dtype=np.float64)
                if arr.shape != self.alpha[name].shape or not np.all(np.isfinite(arr)):
                    raise ValueError(
                        f"policy state '{part}.{name}' is {values!r}, expected "
                        f"{self.alpha[name].size} finite numbers"
                    )
                arrays[part][name] = arr
        self.lr = float(state["lr"])
        self.optimizer = state["optimizer"]
        self.betas = (float(state["betas"][0]), float(state["betas"][1]))
        self.eps = float(state["eps"])
        self.steps = int(state["steps"])
        self.alpha, self._m, self._v = arrays["alpha"], arrays["m"], arrays["v"]
