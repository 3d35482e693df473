"""Data sources: the embedded Fashion-MNIST subset, IDX files and hub datasets, pooled."""

from __future__ import annotations

import functools
import gzip
import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flwr_pfedrlnas.data.hub import HUB_SPECS, hub_to_arrays, load_hub_split

__all__ = [
    "CIFAR10_CLASSES",
    "DEBIAN_FASHION_MNIST_DIR",
    "EMBEDDED_NPZ",
    "SOURCES",
    "DatasetInfo",
    "SourceData",
    "check_source",
    "dataset_info",
    "load_source",
    "resolve_data_dir",
]

SOURCES = ("embedded", "fashion-mnist-idx", "fashion-mnist", "cifar10", "cifar100")
"""Accepted values of ``source``: two offline ones, then three hub datasets."""

DEBIAN_FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

EMBEDDED_NPZ = "fashion_mnist_subset.npz"

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
CIFAR10_CLASSES = (
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
        Hugging Face dataset behind a hub source (its hub id, or the local
        folder given as ``data_dir``), ``None`` for the other sources.
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


def check_source(source: str) -> None:
    """Raise ``ValueError`` naming ``source`` unless it is one of ``SOURCES``."""
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


def _load_hub(source: str, data_dir: str | None = None) -> SourceData:
    spec = HUB_SPECS[source]
    train = load_hub_split(source, data_dir)
    images, labels = _frozen(*hub_to_arrays(train, spec))
    feature = train.features[spec.label_column]
    num_classes = int(getattr(feature, "num_classes", 0) or labels.max() + 1)
    names = tuple(getattr(feature, "names", None) or map(str, range(num_classes)))
    if source == "fashion-mnist":
        info = _fashion_info(source, data_dir or spec.path)
    else:
        mean, std = _CIFAR10_STATS if source == "cifar10" else _CIFAR100_STATS
        info = DatasetInfo(
            name=source,
            num_classes=num_classes,
            channels=3,
            image_size=images.shape[-1],
            resolution=images.shape[-1],
            class_names=names if source == "cifar100" else CIFAR10_CLASSES,
            mean=mean,
            std=std,
            hub_path=data_dir or spec.path,
        )
    return SourceData(info, images, labels)


def dataset_info(source: str) -> DatasetInfo:
    """Metadata of a source without loading it (what a server needs to size a model).

    Class names of ``cifar100`` are the label numbers here; :func:`load_source`
    gives the hub's names.
    """
    check_source(source)
    if source in ("embedded", "fashion-mnist-idx", "fashion-mnist"):
        return _fashion_info(source, HUB_SPECS[source].path if source in HUB_SPECS else None)
    mean, std = _CIFAR10_STATS if source == "cifar10" else _CIFAR100_STATS
    num_classes = 10 if source == "cifar10" else 100
    return DatasetInfo(
        name=source,
        num_classes=num_classes,
        channels=3,
        image_size=32,
        resolution=32,
        class_names=CIFAR10_CLASSES if source == "cifar10" else tuple(map(str, range(100))),
        mean=mean,
        std=std,
        hub_path=HUB_SPECS[source].path,
    )


@functools.lru_cache(maxsize=4)
def _load_source_cached(source: str, data_dir: str | None) -> SourceData:
    if source == "embedded":
        return _load_embedded()
    if source == "fashion-mnist-idx":
        return _load_idx(data_dir)
    return _load_hub(source, data_dir)


def resolve_data_dir(source: str, data_dir: str | None) -> str | None:
    """The absolute ``data_dir`` a source reads (``None`` where it reads none)."""
    if source == "embedded" or not data_dir:
        return None
    resolved = Path(data_dir).expanduser().resolve()
    if source in HUB_SPECS and not resolved.is_dir():
        raise FileNotFoundError(
            f"data_dir={data_dir!r} is not a directory; for source={source!r} it must be "
            "a local folder of the dataset's files (or empty for the Hugging Face hub)"
        )
    return str(resolved)


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
        flwr-datasets (needs a network or a warm Hugging Face cache), or the
        same from a local folder ``data_dir``.
    data_dir : str, optional
        ``"fashion-mnist-idx"``: folder of the IDX files. Hub sources: a local
        folder that ``datasets.load_dataset`` reads in place of the hub
        dataset (e.g. ``data/train-00000-of-00001.parquet`` with the hub's
        columns, as :func:`flwr_pfedrlnas.data.save_cifar_schema` writes);
        it goes through the same ``FederatedDataset`` as the hub.
        ``None`` or ``""``: the default place. Ignored by ``"embedded"``.

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
    ValueError
        A local folder of a hub source lacks a ``train`` split or a column.
    ConnectionError
        The hub cannot be reached for a hub source.
    """
    check_source(source)
    return _load_source_cached(source, resolve_data_dir(source, data_dir))
