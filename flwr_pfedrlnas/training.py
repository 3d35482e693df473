"""Local train and test loops shared by every client and baseline."""

from __future__ import annotations

import copy
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

__all__ = [
    "IMAGE_KEYS",
    "LABEL_KEYS",
    "TrainResult",
    "deployed_accuracy_of",
    "evaluate",
    "recalibrate_as_configured",
    "recalibrate_batchnorm",
    "resolve_device",
    "run_epochs",
    "split_batch",
    "train",
    "training_peak_memory",
]

# Column names a dict batch is searched for, in this order, when no key is given:
# flwr-datasets' CIFAR/MNIST-style datasets ("img"/"image" + "label"), Hugging Face
# image processors ("pixel_values" + "labels"), CIFAR-100 ("fine_label"), and "x"/"y".
IMAGE_KEYS = ("img", "image", "pixel_values", "x")
LABEL_KEYS = ("label", "labels", "fine_label", "y")


def _pick_key(keys: Sequence[str], given: str | None, candidates: tuple[str, ...], what: str):
    if given is not None:
        if given not in keys:
            raise KeyError(f"batch has keys {list(keys)}, not the {what} key {given!r}")
        return given
    for key in candidates:
        if key in keys:
            return key
    raise KeyError(
        f"batch has keys {list(keys)}; none is a known {what} key {list(candidates)}: "
        f"pass {what}_key=<name>"
    )


def split_batch(
    batch: Any, image_key: str | None = None, label_key: str | None = None
) -> tuple[Any, Any]:
    """The (images, labels) of one batch, whatever form the loader yields.

    Parameters
    ----------
    batch : Mapping | tuple | list
        A dict (flwr-datasets / Hugging Face loaders, e.g. ``{"img": x,
        "label": y}``) or an ``(images, labels)`` pair (torch's
        ``TensorDataset``); extra tuple entries are ignored.
    image_key, label_key : str | None (default: None)
        Keys of a dict batch; ``None`` takes the first of :data:`IMAGE_KEYS`
        (``img``, ``image``, ``pixel_values``, ``x``) and :data:`LABEL_KEYS`
        (``label``, ``labels``, ``fine_label``, ``y``) that the batch has.

    Returns
    -------
    tuple
        ``(images, labels)``.

    Raises
    ------
    KeyError
        A dict batch without the given key or any known one; the message lists
        the keys the batch has.
    TypeError
        A batch that is neither a mapping nor a sequence of at least two.
    """
    if isinstance(batch, Mapping):
        keys = [str(k) for k in batch]
        return (
            batch[_pick_key(keys, image_key, IMAGE_KEYS, "image")],
            batch[_pick_key(keys, label_key, LABEL_KEYS, "label")],
        )
    if isinstance(batch, (tuple, list)) and len(batch) >= 2:
        return batch[0], batch[1]
    raise TypeError(
        f"a batch must be a dict or an (images, labels) pair, got {type(batch).__name__}"
        + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
    )


@dataclass
class TrainResult:
    """Outcome of local training."""

    loss: float
    num_examples: int
    seconds: float
    peak_memory_bytes: int


def _tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return int(sum(t.numel() * t.element_size() for t in tensors))


def training_peak_memory(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    optimizer_slots: int = 1,
) -> int:
    """Peak memory of one training step of ``model`` on this batch, in bytes.

    On CUDA it is ``torch.cuda.max_memory_allocated`` around a real step. On
    the CPU it is measured from the step's own allocations: the bytes of every
    distinct tensor autograd saves for the backward pass during a real forward
    (captured with saved-tensor hooks), plus the batch, the parameters, their
    gradients and ``optimizer_slots`` optimiser buffers per parameter. Saved
    activations dominate and are exactly what a smaller subnet saves.
    """
    model.train()
    device = next(model.parameters()).device
    images, labels = images.to(device), labels.to(device)
    # The probe must not move BatchNorm statistics: restore the buffers after it.
    buffers = {name: b.detach().clone() for name, b in model.named_buffers()}
    try:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            loss = nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            return int(torch.cuda.max_memory_allocated(device))

        seen: set[tuple[int, int]] = set()
        saved = 0

        def pack(t: torch.Tensor) -> torch.Tensor:
            nonlocal saved
            key = (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                saved += key[1]
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = nn.functional.cross_entropy(model(images), labels)
        loss.backward()
        weights = _tensor_bytes(model.parameters())
        return int(saved + _tensor_bytes([images]) + weights * (2 + optimizer_slots))
    finally:
        model.zero_grad(set_to_none=True)
        with torch.no_grad():
            for name, b in model.named_buffers():
                b.copy_(buffers[name])


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch device; none given: CUDA when available, else the CPU."""
    if device:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_optimizer(
    params: Iterable[Any],
    name: str = "sgd",
    lr: float = 0.05,
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
) -> torch.optim.Optimizer:
    """The clients' optimiser: ``"sgd"`` (with momentum) or ``"adamw"``."""
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {name!r}")


def training_options(config: Any) -> dict[str, Any]:
    """The optimiser and label smoothing a message's config asks for (defaults: SGD, 0)."""
    smoothing = float(config.get("label-smoothing", 0.0))
    if not 0.0 <= smoothing < 1.0:
        raise ValueError(f"label-smoothing must be in [0, 1), got {smoothing!r}")
    return {"optimizer": str(config.get("optimizer", "sgd")), "label_smoothing": smoothing}


def run_epochs(
    model: nn.Module,
    loader: Iterable[Any],
    optimizer: torch.optim.Optimizer,
    epochs: int,
    device: str | torch.device = "cpu",
    image_key: str | None = None,
    label_key: str | None = None,
    label_smoothing: float = 0.0,
) -> tuple[float, int]:
    """Cross-entropy steps over ``loader`` for ``epochs`` epochs (with label smoothing).

    Batches are dicts or ``(images, labels)`` pairs (see :func:`split_batch`).
    Leaves the modules' train/eval modes as the caller set them. Returns the
    summed loss (weighted by batch size) and the number of examples seen.
    """
    total_loss, total_n = 0.0, 0
    for _ in range(epochs):
        for batch in loader:
            images, labels = split_batch(batch, image_key, label_key)
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = nn.functional.cross_entropy(
                model(images), labels, label_smoothing=label_smoothing
            )
            loss.backward()
            optimizer.step()
            total_loss += float(loss.detach()) * labels.shape[0]
            total_n += int(labels.shape[0])
    return total_loss, total_n


def train(
    model: nn.Module,
    loader: Iterable[Any],
    epochs: int,
    lr: float,
    device: str | torch.device = "cpu",
    momentum: float = 0.9,
    weight_decay: float = 5e-4,
    measure_memory: bool = True,
    image_key: str | None = None,
    label_key: str | None = None,
    optimizer: str = "sgd",
    label_smoothing: float = 0.0,
) -> TrainResult:
    """Train for ``epochs`` local epochs (SGD or AdamW); returns mean loss and timing.

    Batches are dicts or ``(images, labels)`` pairs (see :func:`split_batch`).
    ``seconds`` is the wall time of the training loop itself (the client's
    compute time); the memory probe runs before the clock starts.
    """
    if epochs < 0:
        raise ValueError(f"local-epochs must be >= 0, got {epochs!r}")
    if not lr > 0:
        raise ValueError(f"lr must be positive, got {lr!r}")
    model.to(device)
    peak = 0
    if measure_memory:
        first = next(iter(loader), None)
        if first is not None:
            images, labels = split_batch(first, image_key, label_key)
            peak = training_peak_memory(model, images, labels, optimizer_slots=1)
    opt = make_optimizer(model.parameters(), optimizer, lr, momentum, weight_decay)
    model.train()
    start = time.perf_counter()
    total_loss, total_n = run_epochs(
        model, loader, opt, epochs, device, image_key, label_key, label_smoothing
    )
    seconds = time.perf_counter() - start
    num_examples = total_n // max(epochs, 1)
    return TrainResult(
        loss=total_loss / total_n if total_n else float("nan"),
        num_examples=num_examples,
        seconds=seconds,
        peak_memory_bytes=peak,
    )


@torch.no_grad()
def evaluate(
    model: nn.Module,
    loader: Iterable[Any],
    device: str | torch.device = "cpu",
    image_key: str | None = None,
    label_key: str | None = None,
) -> tuple[float, float, int]:
    """Mean cross-entropy, accuracy in [0, 1], and number of examples.

    Batches are dicts or ``(images, labels)`` pairs (see :func:`split_batch`).
    """
    model.to(device)
    model.eval()
    total_loss, correct, n = 0.0, 0, 0
    for batch in loader:
        images, labels = split_batch(batch, image_key, label_key)
        images, labels = images.to(device), labels.to(device)
        logits = model(images)
        total_loss += float(nn.functional.cross_entropy(logits, labels, reduction="sum"))
        correct += int((logits.argmax(dim=1) == labels).sum())
        n += int(labels.shape[0])
    if n == 0:
        return float("nan"), 0.0, 0
    return total_loss / n, correct / n, n


@torch.no_grad()
def recalibrate_batchnorm(
    model: nn.Module,
    loader: Iterable[Any],
    max_batches: int | None = None,
    device: str | torch.device = "cpu",
    image_key: str | None = None,
    label_key: str | None = None,
) -> int:
    """Recompute BatchNorm running statistics of ``model`` on ``loader``.

    A subnet cut from a weight-sharing supernet inherits running statistics
    averaged over clients whose subnets computed different features in the
    same channels; its weights are right but its statistics are not. As in
    once-for-all, the statistics are reset and re-estimated by forward passes
    over local training data (cumulative average, no gradient, weights
    untouched). Batches are dicts or ``(images, labels)`` pairs (see
    :func:`split_batch`). Returns the number of examples seen.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {m: m.momentum for m in norms}
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average over the batches below
    model.to(device)
    model.train()
    seen = 0
    try:
        for i, batch in enumerate(loader):
            if max_batches is not None and i >= max_batches:
                break
            images, _ = split_batch(batch, image_key, label_key)
            model(images.to(device))
            seen += int(images.shape[0])
    finally:
        for m in norms:
            m.momentum = momenta[m]
        model.eval()
    return seen


def recalibrate_as_configured(
    model: nn.Module,
    loader: Iterable[Any],
    batches: int,
    device: str | torch.device = "cpu",
    image_key: str | None = None,
    label_key: str | None = None,
) -> int:
    """:func:`recalibrate_batchnorm` as a ``bn-recalibration-batches`` value asks.

    0: no re-estimation (returns 0); negative: over the whole ``loader``;
    positive: over its first ``batches`` batches. Returns the number of
    examples seen.
    """
    if batches == 0:
        return 0
    max_batches = None if batches < 0 else batches
    return recalibrate_batchnorm(model, loader, max_batches, device, image_key, label_key)


def deployed_accuracy_of(
    model: nn.Module,
    train_loader: Iterable[Any],
    test_loader: Iterable[Any],
    batches: int,
    device: str | torch.device = "cpu",
    image_key: str | None = None,
    label_key: str | None = None,
) -> float:
    """Accuracy of ``model`` as a client deploys it, ``model`` itself left as it was.

    A copy gets its BatchNorm statistics re-estimated on ``train_loader`` as
    a ``bn-recalibration-batches`` value of ``batches`` asks (no weight
    changes; 0: none) and is tested on ``test_loader``.
    """
    deployed = copy.deepcopy(model)
    recalibrate_as_configured(deployed, train_loader, batches, device, image_key, label_key)
    return float(evaluate(deployed, test_loader, device, image_key, label_key)[1])
