"""Build the embedded Fashion-MNIST subset shipped inside flwr_pfedrlnas/data/."""

from __future__ import annotations

import argparse
import gzip
import hashlib
from pathlib import Path

import numpy as np

PACKAGE_DATA = Path(__file__).resolve().parents[1] / "flwr_pfedrlnas" / "data"
NPZ_NAME = "fashion_mnist_subset.npz"
LICENSE_NAME = "FASHION_MNIST_LICENSE.txt"
FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}


def read_idx(path: Path) -> np.ndarray:
    """Read one gzip-compressed IDX file of unsigned bytes into an array."""
    raw = gzip.decompress(path.read_bytes())
    if raw[0:2] != b"\x00\x00" or raw[2] != 0x08:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def balanced_subset(
    images: np.ndarray, labels: np.ndarray, per_class: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw ``per_class`` images of every class without replacement, by class."""
    chosen = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        if len(idx) < per_class:
            raise ValueError(f"class {c} has {len(idx)} images < {per_class}")
        chosen.append(np.sort(rng.choice(idx, size=per_class, replace=False)))
    order = np.concatenate(chosen)  # grouped by class: compresses a little better
    return np.ascontiguousarray(images[order]), np.ascontiguousarray(labels[order])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("source_dir", type=Path, help="folder with the IDX gz files")
    parser.add_argument("--out-dir", type=Path, default=PACKAGE_DATA)
    parser.add_argument("--train-per-class", type=int, default=1000)
    parser.add_argument("--test-per-class", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    src: Path = args.source_dir
    missing = [n for n in FILES.values() if not (src / n).is_file()]
    if missing:
        raise FileNotFoundError(f"source_dir={str(src)!r} lacks {missing}")
    arrays = {key: read_idx(src / name) for key, name in FILES.items()}

    rng = np.random.default_rng(args.seed)
    train_x, train_y = balanced_subset(
        arrays["train_images"], arrays["train_labels"], args.train_per_class, rng
    )
    test_x, test_y = balanced_subset(
        arrays["test_images"], arrays["test_labels"], args.test_per_class, rng
    )

    out: Path = args.out_dir
    out.mkdir(parents=True, exist_ok=True)
    npz_path = out / NPZ_NAME
    np.savez_compressed(
        npz_path,
        train_images=train_x,
        train_labels=train_y,
        test_images=test_x,
        test_labels=test_y,
    )

    copyright_text = (src / "COPYRIGHT").read_text(encoding="utf-8").rstrip()
    # Hash the pixel and label bytes, not the zip (its members carry timestamps).
    digest = hashlib.sha256()
    for arr in (train_x, train_y, test_x, test_y):
        digest.update(arr.tobytes())
    note = (
        f"Subset: {NPZ_NAME} holds {args.train_per_class} images per class drawn "
        f"from the official Fashion-MNIST train split ({len(train_y)} images) and "
        f"{args.test_per_class} per class from the official test split "
        f"({len(test_y)} images), uniformly without replacement with "
        f"numpy.random.default_rng({args.seed}), unmodified 28x28 uint8 pixels, "
        f"made by scripts/make_embedded_data.py from the original IDX files "
        f"(sha256 of the four arrays' bytes in the order train_images, "
        f"train_labels, test_images, test_labels: {digest.hexdigest()})."
    )
    (out / LICENSE_NAME).write_text(f"{copyright_text}\n\n{note}\n", encoding="utf-8")
    print(f"wrote {npz_path} ({npz_path.stat().st_size} bytes) and {LICENSE_NAME}")


if __name__ == "__main__":
    main()
