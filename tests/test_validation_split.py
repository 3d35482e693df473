"""The validation split: the reward's data, apart from training and from the reported test."""

from __future__ import annotations

import numpy as np
import pytest

from flwr_pfedrlnas.data.datasets import load_client_data, make_val_loader


def _rows(x: np.ndarray) -> set[bytes]:
    return {row.tobytes() for row in x}


@pytest.mark.parametrize("partition_id", [0, 3])
def test_validation_comes_out_of_training_and_leaves_the_test_split_as_it_was(partition_id):
    kw = dict(partition_id=partition_id, num_partitions=10, alpha=0.3, seed=0)
    plain = load_client_data("embedded", **kw)
    split = load_client_data("embedded", val_fraction=0.1, **kw)
    # The reported test split is the same examples, in the same order.
    assert np.array_equal(plain.test_x, split.test_x) and np.array_equal(plain.test_y, split.test_y)
    assert plain.num_val == 0 and make_val_loader(plain, 8) is None
    # Validation + training = the old training part, with no example in two splits.
    assert split.num_val + split.num_train == plain.num_train
    assert _rows(split.val_x).isdisjoint(_rows(split.train_x))
    assert _rows(split.val_x).isdisjoint(_rows(split.test_x))
    assert _rows(split.val_x) | _rows(split.train_x) == _rows(plain.train_x)
    # About a tenth of the partition, with the partition's label mix.
    total = plain.num_train + plain.num_test
    assert abs(split.num_val - 0.1 * total) <= len(np.unique(plain.train_y))
    train_classes = set(np.unique(plain.train_y))
    assert set(np.unique(split.val_y)) <= train_classes
    loader = make_val_loader(split, 16)
    assert sum(len(y) for _, y in loader) == split.num_val


@pytest.mark.parametrize("value", [-0.1, 0.8, 1.0])
def test_a_bad_validation_share_is_refused_by_name(value):
    with pytest.raises(
        ValueError, match=rf"val_fraction={value!r} must be in \[0, 1 - test_fraction\)"
    ):
        load_client_data("embedded", 0, 10, 0.3, 0, test_fraction=0.2, val_fraction=value)
