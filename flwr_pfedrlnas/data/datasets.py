"""Datasets (embedded Fashion-MNIST, IDX, hub), Dirichlet partitions, loaders."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets
    from flwr_datasets import FederatedDataset
    from flwr_datasets.partitioner import DirichletPartitioner, Partitioner

__all__ = [
    "dataset_info",
    "DEBIAN_FASHION_MNIST_DIR",
    "SOURCES",
    "ClientData",
    "DatasetInfo",
    "SourceData",
    "label_distribution",
    "load_client_data",
    "load_source",
    "make_loaders",
    "partition_indices",
]

SOURCES = ("embedded", "fashion-mnist-idx", "fashion-mnist", "cifar10", "cifar100")
"""Accepted values of ``source``: two offline ones, then three hub datasets."""

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

EMBEDDED_NPZ = "fashion_mnist_subset.npz"
MIN_PARTITION_SIZE = 10  # DirichletPartitioner resamples until every client has this
_INDEX = "pool_index"  # column carrying a row's position in the pooled arrays

_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
# Per-channel mean / std of the official train split, pixels scaled to [0, 1].
_FASHION_STATS = ((0.2860,), (0.3530,))
_CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
_CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))


@dataclass(frozen=True)
class DatasetInfo:
    """Metadata of a source.

    Attributes
    ----------
    name : str
        The ``source`` it came from.
    num_classes : int
        Number of labels.
    channels : int
        Image channels (1 for Fashion-MNIST, 3 for CIFAR).
    image_size : int
        Native side length in pixels (28 for Fashion-MNIST, 32 for CIFAR).
    resolution : int
        Side length after padding, what a model sees (32 for all sources:
        Fashion-MNIST is zero-padded by 2 pixels per side so that a 32x32 model
        fits; CIFAR is kept as is).
    class_names : tuple of str
        Name of every label, in label order.
    mean, std : tuple of float
        Per-channel normalisation constants (pixels in [0, 1]).
    hub_path : str or None
        Hugging Face dataset behind a hub source, ``None`` for local ones.
    """

    name: str
    num_classes: int
    channels: int
    image_size: int
    resolution: int
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    hub_path: str | None = None


@dataclass(frozen=True)
class SourceData:
    """A source's pooled examples.

    Attributes
    ----------
    info : DatasetInfo
        Metadata.
    images : np.ndarray
        ``uint8``, ``N x C x H x W`` at the native size (read-only).
    labels : np.ndarray
        ``int64``, ``N`` (read-only).
    """

    info: DatasetInfo
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class ClientData:
    """One client's train and test split, ready for a model.

    Attributes
    ----------
    train_x, test_x : np.ndarray
        ``float32``, ``N x C x H x W``, padded to ``resolution`` and normalised.
    train_y, test_y : np.ndarray
        ``int64`` labels.
    num_classes, in_channels, resolution : int
        What the model has to accept and predict.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    num_classes: int
    in_channels: int
    resolution: int

    @property
    def num_train(self) -> int:
        """Number of training examples."""
        return len(self.train_y)

    @property
    def num_test(self) -> int:
        """Number of test examples."""
        return len(self.test_y)


@dataclass(frozen=True)
class _HubSpec:
    path: str
    image_column: str
    label_column: str


_HUB: dict[str, _HubSpec] = {
    "cifar10": _HubSpec("uoft-cs/cifar10", "img", "label"),
    "cifar100": _HubSpec("uoft-cs/cifar100", "img", "fine_label"),
    "fashion-mnist": _HubSpec("zalando-datasets/fashion_mnist", "image", "label"),
}


def _check_source(source: str) -> None:
    if source not in SOURCES:
        raise ValueError(f"source={source!r} is unknown; choose one of {SOURCES}")


def _fashion_info(name: str, hub_path: str | None = None) -> DatasetInfo:
    return DatasetInfo(
        name=name,
        num_classes=10,
        channels=1,
        image_size=28,
        resolution=32,
        class_names=_FASHION_CLASSES,
        mean=_FASHION_STATS[0],
        std=_FASHION_STATS[1],
        hub_path=hub_path,
    )


def _frozen(images: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


# --------------------------------------------------------------------- sources
def _load_embedded() -> SourceData:
    ref = importlib.resources.files("flwr_pfedrlnas").joinpath("data", EMBEDDED_NPZ)
    with ref.open("rb") as fh, np.load(fh) as npz:
        images = np.concatenate([npz["train_images"], npz["test_images"]])
        labels = np.concatenate([npz["train_labels"], npz["test_labels"]])
    images, labels = _frozen(images[:, None], labels)
    return SourceData(_fashion_info("embedded"), images, labels)


def _read_idx(path: Path) -> np.ndarray:
    raw = path.read_bytes()
    if path.suffix == ".gz":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"file={str(path)!r} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"file={str(path)!r} is truncated: header says {shape}")
    return data.reshape(shape)


def _find_idx(directory: Path, stem: str) -> Path:
    for name in (f"{stem}.gz", stem):
        if (directory / name).is_file():
            return directory / name
    raise FileNotFoundError(
        f"data_dir={str(directory)!r} has no {stem}.gz (nor {stem}); it must hold "
        "the four Fashion-MNIST IDX files"
    )


def _load_idx(data_dir: str | None) -> SourceData:
    if data_dir is None:
        if not Path(DEBIAN_FASHION_MNIST_DIR).is_dir():
            raise FileNotFoundError(
                "data_dir=None and the default "
                f"{DEBIAN_FASHION_MNIST_DIR!r} does not exist: pass data_dir=<folder "
                "with the Fashion-MNIST IDX gz files> (or apt-get install "
                "dataset-fashion-mnist)"
            )
        data_dir = DEBIAN_FASHION_MNIST_DIR
    directory = Path(data_dir)
    if not directory.is_dir():
        raise FileNotFoundError(f"data_dir={data_dir!r} is not a directory")
    parts = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images = _read_idx(_find_idx(directory, f"{prefix}-images-idx3-ubyte"))
        labels = _read_idx(_find_idx(directory, f"{prefix}-labels-idx1-ubyte"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"data_dir={data_dir!r}: {split} images {images.shape} and labels "
                f"{labels.shape} do not match"
            )
        parts[split] = (images, labels)
    images = np.concatenate([parts["train"][0], parts["test"][0]])[:, None]
    labels = np.concatenate([parts["train"][1], parts["test"][1]])
    images, labels = _frozen(images, labels)
    return SourceData(_fashion_info("fashion-mnist-idx"), images, labels)


def _hub_error(source: str, spec: _HubSpec, exc: BaseException) -> ConnectionError:
    return ConnectionError(
        f"source={source!r}: could not load the Hugging Face dataset "
        f"{spec.path!r}; the hub is unreachable (offline?) or the dataset is not "
        "available. Without a network use source='embedded' (the bundled "
        "Fashion-MNIST subset) or source='fashion-mnist-idx' with data_dir=<folder "
        f"of Fashion-MNIST IDX files>. Cause: {type(exc).__name__}: {exc}"
    )


def _add_index(dataset_dict: datasets.DatasetDict) -> datasets.DatasetDict:
    train = dataset_dict["train"]
    dataset_dict["train"] = train.add_column(_INDEX, np.arange(train.num_rows))
    return dataset_dict


def _federated_dataset(source: str, partitioner: Partitioner) -> FederatedDataset:
    """The hub dataset as a FederatedDataset whose train split gets ``partitioner``.

    The split is not shuffled (``shuffle=False``) and every row carries its
    position in that split, so partitions index straight into ``load_source``'s
    pooled arrays.
    """
    from flwr_datasets import FederatedDataset

    return FederatedDataset(
        dataset=_HUB[source].path,
        partitioners={"train": partitioner},
        preprocessor=_add_index,
        shuffle=False,
    )


def _hub_to_arrays(train: datasets.Dataset, spec: _HubSpec) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    columns = [spec.image_column, spec.label_column]
    for batch in train.select_columns(columns).with_format("numpy").iter(1000):
        img = np.asarray(batch[spec.image_column], dtype=np.uint8)
        img = img[:, None] if img.ndim == 3 else img.transpose(0, 3, 1, 2)
        images.append(img)
        labels.append(np.asarray(batch[spec.label_column]))
    return np.concatenate(images), np.concatenate(labels)


def _load_hub(source: str) -> SourceData:
    from flwr_datasets.partitioner import IidPartitioner

    spec = _HUB[source]
    try:
        train = _federated_dataset(source, IidPartitioner(1)).load_split("train")
    except OSError as exc:  # ConnectionError, DatasetNotFoundError, HTTP errors
        raise _hub_error(source, spec, exc) from exc
    images, labels = _frozen(*_hub_to_arrays(train, spec))
    feature = train.features[spec.label_column]
    num_classes = int(getattr(feature, "num_classes", 0) or labels.max() + 1)
    names = tuple(getattr(feature, "names", None) or map(str, range(num_classes)))
    if source == "fashion-mnist":
        info = _fashion_info(source, spec.path)
    else:
        mean, std = _CIFAR10_STATS if source == "cifar10" else _CIFAR100_STATS
        info = DatasetInfo(
            name=source,
            num_classes=num_classes,
            channels=3,
            image_size=images.shape[-1],
            resolution=images.shape[-1],
            class_names=names if source == "cifar100" else _CIFAR10_CLASSES,
            mean=mean,
            std=std,
            hub_path=spec.path,
        )
    return SourceData(info, images, labels)


def dataset_info(source: str) -> DatasetInfo:
    """Metadata of a source without loading it (what a server needs to size a model).

    Class names of ``cifar100`` are the label numbers here; :func:`load_source`
    gives the hub's names.
    """
    _check_source(source)
    if source in ("embedded", "fashion-mnist-idx", "fashion-mnist"):
        return _fashion_info(source, _HUB[source].path if source in _HUB else None)
    mean, std = _CIFAR10_STATS if source == "cifar10" else _CIFAR100_STATS
    num_classes = 10 if source == "cifar10" else 100
    return DatasetInfo(
        name=source,
        num_classes=num_classes,
        channels=3,
        image_size=32,
        resolution=32,
        class_names=_CIFAR10_CLASSES if source == "cifar10" else tuple(map(str, range(100))),
        mean=mean,
        std=std,
        hub_path=_HUB[source].path,
    )


@functools.lru_cache(maxsize=4)
def _load_source_cached(source: str, data_dir: str | None) -> SourceData:
    if source == "embedded":
        return _load_embedded()
    if source == "fashion-mnist-idx":
        return _load_idx(data_dir)
    return _load_hub(source)


def load_source(source: str, data_dir: str | None = None) -> SourceData:
    """Load a source's pooled images and labels (cached per process).

    Parameters
    ----------
    source : str
        ``"embedded"``: the Fashion-MNIST subset shipped in the package
        (1,000 images per class from the official train split + 200 per class
        from the test split, pooled: 12,000 images).
        ``"fashion-mnist-idx"``: the original IDX files (``*.gz`` or not) in
        ``data_dir``, train + test pooled (70,000 images); ``data_dir=None``
        means Debian's ``/usr/share/datasets/fashion-mnist``.
        ``"fashion-mnist"``, ``"cifar10"``, ``"cifar100"``: the train split of
        ``zalando-datasets/fashion_mnist``, ``uoft-cs/cifar10``,
        ``uoft-cs/cifar100`` (fine labels) from the Hugging Face hub, through
        flwr-datasets (needs a network or a warm Hugging Face cache).
    data_dir : str, optional
        Folder of the IDX files; used by ``"fashion-mnist-idx"`` only.

    Returns
    -------
    SourceData
        ``info``, ``images`` (``uint8 N x C x H x W``) and ``labels`` (``int64``).

    Raises
    ------
    ValueError
        Unknown ``source`` or malformed files.
    FileNotFoundError
        ``data_dir`` or one of its files is missing.
    ConnectionError
        The hub cannot be reached for a hub source.
    """
    _check_source(source)
    if source == "fashion-mnist-idx" and data_dir is not None:
        data_dir = str(Path(data_dir).expanduser().resolve())
    elif source != "fashion-mnist-idx":
        data_dir = None
    return _load_source_cached(source, data_dir)


# ---------------------------------------------------------------- partitioning
def _dirichlet(
    num_partitions: int, label_column: str, alpha: float, seed: int
) -> DirichletPartitioner:
    from flwr_datasets.partitioner import DirichletPartitioner

    return DirichletPartitioner(
        num_partitions=num_partitions,
        partition_by=label_column,
        alpha=alpha,
        min_partition_size=MIN_PARTITION_SIZE,
        self_balancing=False,
        shuffle=True,
        seed=seed,
    )


def _check_partitioning(num_partitions: int, alpha: float, seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise ValueError(f"seed={seed!r} must be an int >= 0")
    if isinstance(num_partitions, bool) or not isinstance(num_partitions, int):
        raise TypeError(f"num_partitions={num_partitions!r} must be an int")
    if num_partitions < 1:
        raise ValueError(f"num_partitions={num_partitions} must be >= 1")
    if not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"alpha={alpha!r} must be a finite number > 0")


def _index_column(partition: datasets.Dataset) -> np.ndarray:
    # Whole-column slice: iterating a datasets 4 Column formats row by row (slow).
    column = partition.select_columns([_INDEX]).with_format("numpy")[:][_INDEX]
    return np.asarray(column, dtype=np.int64)


@functools.lru_cache(maxsize=16)
def _partition_cached(
    source: str, data_dir: str | None, num_partitions: int, alpha: float, seed: int
) -> tuple[np.ndarray, ...]:
    import datasets

    pool = load_source(source, data_dir)
    if num_partitions * MIN_PARTITION_SIZE > len(pool):
        raise ValueError(
            f"num_partitions={num_partitions} is too many for source={source!r}: "
            f"{len(pool)} examples < {MIN_PARTITION_SIZE} per partition"
        )
    if source in _HUB:
        partitioner = _dirichlet(num_partitions, _HUB[source].label_column, alpha, seed)
        fds = _federated_dataset(source, partitioner)
        try:
            fds.load_partition(0, "train")  # loads the split, assigns partitioner
        except OSError as exc:
            raise _hub_error(source, _HUB[source], exc) from exc
    else:
        partitioner = _dirichlet(num_partitions, "label", alpha, seed)
        partitioner.dataset = datasets.Dataset.from_dict(
            {"label": pool.labels, _INDEX: np.arange(len(pool), dtype=np.int64)}
        )
    try:
        parts = tuple(
            _index_column(partitioner.load_partition(pid)) for pid in range(num_partitions)
        )
    except ValueError as exc:
        raise ValueError(
            f"alpha={alpha} with num_partitions={num_partitions} on "
            f"source={source!r}: the Dirichlet partitioner could not give every "
            f"partition {MIN_PARTITION_SIZE} examples ({exc}); raise alpha or "
            "lower num_partitions"
        ) from exc
    for part in parts:
        part.flags.writeable = False
    return parts


def partition_indices(
    source: str,
    num_partitions: int,
    alpha: float,
    seed: int,
    data_dir: str | None = None,
) -> tuple[np.ndarray, ...]:
    """Split a source's pool over ``num_partitions`` clients, Dirichlet over labels.

    Every source goes through flwr-datasets' ``DirichletPartitioner`` (by label,
    ``alpha``, ``seed``, ``min_partition_size=10``, ``self_balancing=False``):
    local sources by handing it a ``datasets.Dataset`` of the pooled labels,
    hub sources through ``FederatedDataset(partitioners={"train": ...})``.
    The result is cached per process.

    Parameters
    ----------
    source, data_dir
        As in :func:`load_source`.
    num_partitions : int
        Number of clients ``K``.
    alpha : float
        Dirichlet concentration; small = skewed label mixes, large = near IID.
    seed : int
        Seed of the partitioner.

    Returns
    -------
    tuple of np.ndarray
        For each client, the (read-only, ``int64``) positions of its examples in
        ``load_source(source, data_dir)``; disjoint, together covering the pool.
    """
    _check_source(source)
    _check_partitioning(num_partitions, alpha, seed)
    if source == "fashion-mnist-idx" and data_dir is not None:
        data_dir = str(Path(data_dir).expanduser().resolve())
    elif source != "fashion-mnist-idx":
        data_dir = None
    return _partition_cached(source, data_dir, int(num_partitions), float(alpha), int(seed))


def _stratified_split(
    labels: np.ndarray, test_fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the train and test examples, the same label mix in both."""
    train, test = [], []
    counts = {}
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(np.floor(test_fraction * len(idx) + 0.5))
        counts[c] = len(idx)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    train_idx, test_idx = np.concatenate(train), np.concatenate(test)
    if len(test_idx) == 0 and len(train_idx) > 1:  # tiny partition: keep 1 to test
        largest = max(counts, key=counts.__getitem__)
        pos = np.flatnonzero(labels[train_idx] == largest)[0]
        test_idx = train_idx[pos : pos + 1]
        train_idx = np.delete(train_idx, pos)
    return rng.permutation(train_idx), rng.permutation(test_idx)


def _prepare(images: np.ndarray, info: DatasetInfo) -> np.ndarray:
    x = images.astype(np.float32) / 255.0
    pad = (info.resolution - info.image_size) // 2
    if pad:
        x = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))  # zero = background
    mean = np.asarray(info.mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(info.std, dtype=np.float32)[None, :, None, None]
    return np.ascontiguousarray((x - mean) / std, dtype=np.float32)


def load_client_data(
    source: str,
    partition_id: int,
    num_partitions: int,
    alpha: float,
    seed: int,
    test_fraction: float = 0.2,
    data_dir: str | None = None,
) -> ClientData:
    """One client's train / test data of a Dirichlet-partitioned source.

    The pool (see :func:`load_source`) is split over ``num_partitions``
    clients by :func:`partition_indices`; this client's partition is then
    split into train and test stratified by label (each class contributes
    ``round(test_fraction * n_class)`` examples to test), so its test split
    has the label mix of its train split. Images are scaled to [0, 1],
    zero-padded to 32x32 (Fashion-MNIST: 28 -> 32, so that the same 32x32
    models fit every source; CIFAR stays 32) and normalised with the
    dataset's per-channel mean / std. Pool and partitioning are cached per
    process, so a simulation may call this for every client and round.

    Parameters
    ----------
    source, data_dir
        As in :func:`load_source`.
    partition_id : int
        This client, in ``[0, num_partitions)``.
    num_partitions, alpha, seed
        As in :func:`partition_indices`; ``seed`` also seeds the split.
    test_fraction : float, default 0.2
        Share of each class held out for testing, in ``(0, 1)``.

    Returns
    -------
    ClientData
    """
    _check_partitioning(num_partitions, alpha, seed)
    if isinstance(partition_id, bool) or not isinstance(partition_id, int | np.integer):
        raise TypeError(f"partition_id={partition_id!r} must be an int")
    if not 0 <= partition_id < num_partitions:
        raise ValueError(
            f"partition_id={partition_id} is outside [0, {num_partitions}) "
            f"(num_partitions={num_partitions})"
        )
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction={test_fraction!r} must be in (0, 1)")
    pool = load_source(source, data_dir)
    idx = partition_indices(source, num_partitions, alpha, seed, data_dir)
    idx = idx[int(partition_id)]
    labels = pool.labels[idx]
    rng = np.random.default_rng([seed, int(partition_id)])
    train_pos, test_pos = _stratified_split(labels, test_fraction, rng)
    info = pool.info
    return ClientData(
        train_x=_prepare(pool.images[idx[train_pos]], info),
        train_y=labels[train_pos].copy(),
        test_x=_prepare(pool.images[idx[test_pos]], info),
        test_y=labels[test_pos].copy(),
        num_classes=info.num_classes,
        in_channels=info.channels,
        resolution=info.resolution,
    )


def make_loaders(
    client_data: ClientData, batch_size: int, seed: int
) -> tuple[DataLoader, DataLoader]:
    """Torch loaders over a client's data.

    Parameters
    ----------
    client_data : ClientData
        From :func:`load_client_data`.
    batch_size : int
        Examples per batch (> 0).
    seed : int
        Seeds the shuffling of the train loader (the test loader is in order).

    Returns
    -------
    (DataLoader, DataLoader)
        Train loader (shuffled) and test loader, ``num_workers=0``.
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int):
        raise TypeError(f"batch_size={batch_size!r} must be an int")
    if batch_size < 1:
        raise ValueError(f"batch_size={batch_size} must be >= 1")
    train = TensorDataset(
        torch.from_numpy(client_data.train_x), torch.from_numpy(client_data.train_y)
    )
    test = TensorDataset(torch.from_numpy(client_data.test_x), torch.from_numpy(client_data.test_y))
    generator = torch.Generator().manual_seed(int(seed))
    train_loader = DataLoader(
        train, batch_size=batch_size, shuffle=True, generator=generator, num_workers=0
    )
    test_loader = DataLoader(test, batch_size=batch_size, shuffle=False, num_workers=0)
    return train_loader, test_loader


def label_distribution(partition_labels: Sequence[np.ndarray], num_classes: int) -> np.ndarray:
    """Per-client label histograms.

    Parameters
    ----------
    partition_labels : sequence of np.ndarray
        Each client's labels (e.g. ``pool.labels[idx]`` for every ``idx`` of
        :func:`partition_indices`).
    num_classes : int
        Number of labels.

    Returns
    -------
    np.ndarray
        ``int64``, ``K x num_classes``: row ``i`` counts client ``i``'s labels.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes={num_classes} must be >= 1")
    hist = np.zeros((len(partition_labels), num_classes), dtype=np.int64)
    for i, labels in enumerate(partition_labels):
        labels = np.asarray(labels, dtype=np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(f"partition_labels[{i}] has labels outside [0, {num_classes})")
        hist[i] = np.bincount(labels, minlength=num_classes)
    return hist
