"""Bundled data sets: read from scikit-learn's package files without importing scikit-learn,
split and standardized to the same floats as scikit-learn's own functions."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from hpspec import datasets
from hpspec.datasets import _load_builtin


def _with_sklearn(name: str, val_fraction: float, split_seed: int, n_train: int | None):
    """The data as hpspec built it before: sklearn's loader, train_test_split, StandardScaler."""
    from sklearn import datasets as skd
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    bunch = getattr(skd, f"load_{name}")()
    x, y = bunch.data.astype(np.float64), bunch.target
    classify = name != "diabetes"
    x_tr, x_va, y_tr, y_va = train_test_split(x, y, test_size=val_fraction,
                                              random_state=split_seed,
                                              stratify=y if classify else None)
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    scaler = StandardScaler().fit(x_tr)
    return (torch.as_tensor(scaler.transform(x_tr), dtype=torch.float32), y_tr,
            torch.as_tensor(scaler.transform(x_va), dtype=torch.float32), y_va)


@pytest.mark.parametrize("name", ["digits", "breast_cancer", "diabetes", "wine", "iris"])
@pytest.mark.parametrize("val_fraction,split_seed,n_train",
                         [(0.2, 0, None), (0.33, 7, None), (0.1, 3, 40)])
def test_bundled_sets_equal_sklearns_split_and_scaling(name, val_fraction, split_seed, n_train):
    if n_train is not None and name not in ("digits", "breast_cancer", "diabetes"):
        n_train = None
    opts = {"val_fraction": val_fraction, "split_seed": split_seed}
    if n_train is not None:
        opts["n_train"] = n_train
    got = _load_builtin(name, tuple(opts.items()))
    x_tr, y_tr, x_va, y_va = _with_sklearn(name, val_fraction, split_seed, n_train)
    # bit for bit: the same rows in the same order, the same floats
    assert torch.equal(got.x_train, x_tr)
    assert torch.equal(got.x_val, x_va)
    if name == "diabetes":
        mu, sd = float(y_tr.mean()), float(y_tr.std())
        assert torch.equal(got.y_train.flatten(),
                           torch.as_tensor((y_tr - mu) / sd, dtype=torch.float32))
    else:
        assert torch.equal(got.y_train, torch.as_tensor(y_tr, dtype=torch.long))
        assert torch.equal(got.y_val, torch.as_tensor(y_va, dtype=torch.long))


def test_loading_digits_does_not_import_sklearn():
    code = ("import sys, hpspec as hp; d = hp.datasets.digits().load(); "
            "print(d.x_train.shape[0], sorted(m for m in sys.modules if m.startswith('sklearn')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split(maxsplit=1) == ["1437", "[]\n"] or out.stdout.strip() == "1437 []"


def test_a_split_that_cannot_be_stratified_says_why():
    y = np.array([0, 0, 0, 1])
    with pytest.raises(ValueError, match="smallest has 1"):
        datasets._split_indices(y, True, 0.5, 0)
