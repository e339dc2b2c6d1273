"""Data sets for experiments: scikit-learn's bundled ones, or the user's own tensors.

A :class:`DataSpec` is a small description (name, task, options) made when the experiment
file is imported; the tensors are built when a cell first trains, so collecting tests stays
fast and never touches torch or scikit-learn for data. Nothing is downloaded: the bundled sets
ship inside scikit-learn.
"""

from __future__ import annotations

import csv
import functools
import gzip
import importlib.util
import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import attrs

from hpspec.errors import SpecError

__all__ = [
    "DataSpec",
    "Data",
    "digits",
    "breast_cancer",
    "diabetes",
    "iris",
    "wine",
    "tensors",
    "coerce_data",
]

CLASSIFICATION, REGRESSION = "classification", "regression"


@attrs.frozen
class Data:
    """Loaded tensors (CPU or on a device) with what the runner needs to know about them."""

    x_train: Any
    y_train: Any
    x_val: Any
    y_val: Any
    task: str
    n_classes: int | None

    @property
    def n_features(self) -> int:
        return int(self.x_train.shape[1]) if self.x_train.dim() == 2 else int(
            self.x_train[0].numel()
        )

    @property
    def n_train(self) -> int:
        return int(self.x_train.shape[0])

    def to(self, device: str) -> Data:
        return attrs.evolve(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


@attrs.frozen
class DataSpec:
    """A data set by name and options; ``load()`` builds (and caches) its CPU tensors."""

    name: str
    task: str
    options: tuple[tuple[str, Any], ...] = ()
    #: For user-supplied tensors: the loaded data itself (not part of equality or the key).
    preloaded: Data | None = attrs.field(default=None, eq=False, repr=False)

    def load(self) -> Data:
        if self.preloaded is not None:
            return self.preloaded
        return _load_builtin(self.name, self.options)

    @property
    def key(self) -> str:
        """A stable description for cache keys and reports."""
        opts = ",".join(f"{k}={v!r}" for k, v in self.options)
        return f"{self.name}({opts})"


def _val_size(n: int, val_fraction: float) -> int:
    return math.ceil(val_fraction * n)


def _share(counts: Any, draws: int, rng: Any) -> Any:
    """How many of ``draws`` samples each class gets: its proportional share rounded down,
    then one more for the classes with the largest remainders (ties drawn at random)."""
    import numpy as np

    exact = counts / counts.sum() * draws
    out = np.floor(exact)
    missing = int(draws - out.sum())
    if missing > 0:
        remainder = exact - out
        for value in np.sort(np.unique(remainder))[::-1]:
            (tied,) = np.where(remainder == value)
            k = min(len(tied), missing)
            out[rng.choice(tied, size=k, replace=False)] += 1
            missing -= k
            if missing == 0:
                break
    return out.astype(int)


def _split_indices(y: Any, stratify: bool, val_fraction: float, seed: int) -> tuple[Any, Any]:
    """Train and validation row indices: a seeded shuffle split, stratified by class for
    classification.

    The same indices, in the same order, as scikit-learn's ``train_test_split(...,
    test_size=val_fraction, random_state=seed, stratify=y or None)``, which hpspec used until
    importing ``sklearn.model_selection`` (over a second, most of a small run's fixed cost)
    was found to be the price; tests/test_datasets.py checks the equality for every bundled
    set.
    """
    import numpy as np

    n = len(y)
    n_val = _val_size(n, val_fraction)
    rng = np.random.RandomState(seed)
    if not stratify:
        order = rng.permutation(n)
        return order[n_val:], order[:n_val]
    _, label, counts = np.unique(y, return_inverse=True, return_counts=True)
    if counts.min() < 2 or n - n_val < len(counts) or n_val < len(counts):
        raise ValueError(f"cannot split {n} samples of {len(counts)} classes (smallest has "
                         f"{counts.min()}) with val_fraction={val_fraction}")
    rows_of = np.split(np.argsort(label, kind="stable"), np.cumsum(counts)[:-1])
    n_train_of = _share(counts, n - n_val, rng)
    n_val_of = _share(counts - n_train_of, n_val, rng)
    train: list[Any] = []
    val: list[Any] = []
    for rows, a, b in zip(rows_of, n_train_of, n_val_of):
        shuffled = rows[rng.permutation(len(rows))]
        train.extend(shuffled[:a])
        val.extend(shuffled[a : a + b])
    return rng.permutation(train), rng.permutation(val)


def _standardize(x_tr: Any, x_va: Any) -> tuple[Any, Any]:
    """Centre and scale both parts by the training part's mean and deviation; features that
    are (numerically) constant keep a scale of 1. The same floats as scikit-learn's
    ``StandardScaler().fit(x_tr)`` transform (same sums in the same order)."""
    import numpy as np

    n = x_tr.shape[0]
    mean = x_tr.sum(axis=0) / n
    centred = x_tr - mean
    correction = centred.sum(axis=0)
    var = ((centred**2).sum(axis=0) - correction**2 / n) / n
    eps = np.finfo(np.float64).eps
    constant = var <= n * eps * var + (n * mean * eps) ** 2
    scale = np.sqrt(var)
    scale[constant] = 1.0
    return (x_tr - mean) / scale, (x_va - mean) / scale


@functools.lru_cache(maxsize=16)
def _load_builtin(name: str, options: tuple[tuple[str, Any], ...]) -> Data:
    import numpy as np
    import torch

    opts = dict(options)
    loader: Callable[[], tuple[Any, Any]] = _BUILTINS[name][0]
    task = _BUILTINS[name][1]
    x, y = loader()
    x = x.astype(np.float64)
    train, val = _split_indices(y, task == CLASSIFICATION, opts.get("val_fraction", 0.2),
                                opts.get("split_seed", 0))
    x_tr, x_va, y_tr, y_va = x[train], x[val], y[train], y[val]
    n_train = opts.get("n_train")
    if n_train is not None:
        x_tr, y_tr = x_tr[:n_train], y_tr[:n_train]
    x_tr, x_va = _standardize(x_tr, x_va)
    if task == CLASSIFICATION:
        yt, yv = torch.as_tensor(y_tr, dtype=torch.long), torch.as_tensor(y_va, dtype=torch.long)
        n_classes = int(max(yt.max(), yv.max())) + 1
    else:
        mu, sd = float(y_tr.mean()), float(y_tr.std()) or 1.0
        yt = torch.as_tensor((y_tr - mu) / sd, dtype=torch.float32).reshape(-1, 1)
        yv = torch.as_tensor((y_va - mu) / sd, dtype=torch.float32).reshape(-1, 1)
        n_classes = None
    return Data(
        x_train=torch.as_tensor(x_tr, dtype=torch.float32),
        y_train=yt,
        x_val=torch.as_tensor(x_va, dtype=torch.float32),
        y_val=yv,
        task=task,
        n_classes=n_classes,
    )


def _bundled(file: str) -> Path:
    """A data file shipped inside scikit-learn, found without importing scikit-learn
    (``import sklearn`` alone loads over a thousand modules)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("hpspec's bundled data sets come with scikit-learn: "
                                  "pip install scikit-learn")
    return Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / file


def _csv_set(file: str) -> Callable[[], tuple[Any, Any]]:
    """A bundled CSV whose first row is ``n_samples,n_features,names...`` and whose last
    column is the integer class (iris, wine, breast cancer)."""

    def load() -> tuple[Any, Any]:
        import numpy as np

        with _bundled(file).open(encoding="utf-8") as f:
            rows = list(csv.reader(f))
        n, d = int(rows[0][0]), int(rows[0][1])
        table = rows[1 : n + 1]
        x = np.array([r[:d] for r in table], dtype=np.float64)
        y = np.array([int(r[-1]) for r in table], dtype=int)
        return x, y

    return load


def _digits() -> tuple[Any, Any]:
    import numpy as np

    with gzip.open(_bundled("digits.csv.gz"), mode="rt", encoding="utf-8") as f:
        table = np.loadtxt(f, delimiter=",")
    return table[:, :-1], table[:, -1].astype(int)


def _diabetes() -> tuple[Any, Any]:
    # Its features are rescaled by scikit-learn's own loader: kept as it is.
    from sklearn import datasets as skd

    bunch = skd.load_diabetes()
    return bunch.data, bunch.target


_BUILTINS: dict[str, tuple[Callable[[], tuple[Any, Any]], str]] = {
    "digits": (_digits, CLASSIFICATION),
    "breast_cancer": (_csv_set("breast_cancer.csv"), CLASSIFICATION),
    "diabetes": (_diabetes, REGRESSION),
    "wine": (_csv_set("wine_data.csv"), CLASSIFICATION),
    "iris": (_csv_set("iris.csv"), CLASSIFICATION),
}


def _builtin(name: str, val_fraction: float, split_seed: int, n_train: int | None) -> DataSpec:
    opts: dict[str, Any] = {"val_fraction": val_fraction, "split_seed": split_seed}
    if n_train is not None:
        opts["n_train"] = n_train
    return DataSpec(name, _BUILTINS[name][1], tuple(opts.items()))


def digits(val_fraction: float = 0.2, split_seed: int = 0, n_train: int | None = None) -> DataSpec:
    """scikit-learn's 8x8 digits: 1797 images as 64 standardized features, 10 classes.

    A fixed stratified split (``val_fraction`` held out, ``split_seed``); features are
    standardized with the training split's statistics. ``n_train`` keeps only that many
    training samples (to make over-fitting visible).
    """
    return _builtin("digits", val_fraction, split_seed, n_train)


def breast_cancer(
    val_fraction: float = 0.2, split_seed: int = 0, n_train: int | None = None
) -> DataSpec:
    """scikit-learn's Wisconsin breast cancer set: 569 samples, 30 features, 2 classes."""
    return _builtin("breast_cancer", val_fraction, split_seed, n_train)


def diabetes(val_fraction: float = 0.2, split_seed: int = 0, n_train: int | None = None) -> DataSpec:
    """scikit-learn's diabetes regression set: 442 samples, 10 features; the target is
    standardized with the training split's mean and deviation, shaped (n, 1)."""
    return _builtin("diabetes", val_fraction, split_seed, n_train)


def iris(val_fraction: float = 0.2, split_seed: int = 0) -> DataSpec:
    """scikit-learn's iris: 150 samples, 4 features, 3 classes."""
    return _builtin("iris", val_fraction, split_seed, None)


def wine(val_fraction: float = 0.2, split_seed: int = 0) -> DataSpec:
    """scikit-learn's wine: 178 samples, 13 features, 3 classes."""
    return _builtin("wine", val_fraction, split_seed, None)


def tensors(train: Any, val: Any, task: str | None = None, name: str = "tensors") -> Any:
    """Your own data: ``train`` and ``val`` as ``(x, y)`` tensor pairs or torch Datasets.

    ``task`` is inferred from ``y``'s dtype (integers: classification, floats: regression)
    unless given. Regression targets of shape (n,) become (n, 1) to match a model's output.
    Checked when the experiment is collected, so a mistake names the experiment.
    """
    return _RawTensors(train, val, task, name)


@attrs.frozen
class _RawTensors:
    train: Any = attrs.field(eq=False)
    val: Any = attrs.field(eq=False)
    task: str | None
    name: str


def _as_xy(part: Any, which: str, where: str) -> tuple[Any, Any]:
    import torch

    if isinstance(part, torch.utils.data.Dataset) and not isinstance(part, (tuple, list)):
        try:
            n = len(part)  # type: ignore[arg-type]
            pairs = [part[i] for i in range(n)]
            x = torch.stack([torch.as_tensor(p[0]) for p in pairs])
            y = torch.stack([torch.as_tensor(p[1]) for p in pairs])
        except Exception as e:  # the user's Dataset: say which and why
            raise SpecError(
                f"could not be read as (x, y) samples: {e}", where=where,
                argument=f"data ({which})", value=type(part).__name__,
                fix="make __getitem__ return (features, target) and define __len__",
            ) from None
        return x, y
    if isinstance(part, (tuple, list)) and len(part) == 2:
        x, y = part
        if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor):
            try:
                x, y = torch.as_tensor(x), torch.as_tensor(y)
            except Exception:
                raise SpecError(
                    "must hold tensors (or arrays)", where=where, argument=f"data ({which})",
                    value=(type(x).__name__, type(y).__name__),
                    fix="pass (torch.tensor(X), torch.tensor(y))",
                ) from None
        return x, y
    raise SpecError(
        "must be an (x, y) pair of tensors or a torch Dataset", where=where,
        argument=f"data ({which})", value=type(part).__name__,
        fix="pass data=((x_train, y_train), (x_val, y_val))",
    )


def _coerce_pair(train: Any, val: Any, task: str | None, name: str, where: str) -> DataSpec:

    x_tr, y_tr = _as_xy(train, "train", where)
    x_va, y_va = _as_xy(val, "val", where)
    for which, x, y in (("train", x_tr, y_tr), ("val", x_va, y_va)):
        if x.dim() < 2:
            raise SpecError(
                "features must have a sample dimension and at least one feature dimension",
                where=where, argument=f"data ({which} x.shape)", value=tuple(x.shape),
                fix="reshape to (n_samples, n_features), e.g. x.reshape(-1, 1)",
            )
        if x.shape[0] != y.shape[0]:
            raise SpecError(
                f"has {x.shape[0]} samples but y has {y.shape[0]}", where=where,
                argument=f"data ({which} x.shape)", value=tuple(x.shape),
                fix="give x and y the same number of rows",
            )
        if x.shape[0] == 0:
            raise SpecError("is empty", where=where, argument=f"data ({which})",
                            value=tuple(x.shape), fix="give at least one sample")
    if x_tr.shape[1:] != x_va.shape[1:]:
        raise SpecError(
            f"train features have shape {tuple(x_tr.shape[1:])} but val features "
            f"{tuple(x_va.shape[1:])}", where=where, argument="data (val x.shape)",
            value=tuple(x_va.shape), fix="give train and val the same feature shape",
        )
    _check_values(((("train", "x"), x_tr), (("val", "x"), x_va)), where)
    if task is None:
        task = REGRESSION if y_tr.is_floating_point() else CLASSIFICATION
    if task not in (CLASSIFICATION, REGRESSION):
        raise SpecError("must be 'classification' or 'regression'", where=where,
                        argument="task", value=task)
    n_classes = None
    if task == CLASSIFICATION:
        if y_tr.is_floating_point() or y_tr.dim() != 1:
            raise SpecError(
                "classification targets must be a 1-D tensor of class indices", where=where,
                argument="data (train y)", value=f"{y_tr.dtype} {tuple(y_tr.shape)}",
                fix="use y.long() with shape (n,), or task='regression'",
            )
        y_tr, y_va = y_tr.long(), y_va.long()
        lo = min(int(y_tr.min()), int(y_va.min()))
        if lo < 0:
            raise SpecError("has a negative class index", where=where,
                            argument="data (y)", value=lo, fix="number classes from 0")
        n_classes = int(y_tr.max()) + 1
        if int(y_va.max()) >= n_classes:
            # A model sized from the training classes would fail later with a misleading
            # class count (or, sized from the val labels, learn classes it never sees).
            bad = int(y_va.max())
            row = int((y_va == bad).nonzero()[0, 0])
            raise SpecError(
                f"has class {bad} (first at row {row}), which no training sample has: the "
                f"training labels are 0..{n_classes - 1}", where=where,
                argument="data (val y)", value=bad,
                fix="split so that every class occurs in training (a stratified split), or "
                "drop the validation samples of classes the model cannot learn",
            )
    else:
        _check_values(((("train", "y"), y_tr), (("val", "y"), y_va)), where)
        y_tr, y_va = y_tr.float(), y_va.float()
        if y_tr.dim() == 1:
            y_tr, y_va = y_tr.reshape(-1, 1), y_va.reshape(-1, 1)
    data = Data(x_tr.float(), y_tr, x_va.float(), y_va, task, n_classes)
    opts = (("n_train", int(x_tr.shape[0])), ("n_val", int(x_va.shape[0])))
    return DataSpec(name, task, opts, preloaded=data)


def _check_values(parts: Any, where: str) -> None:
    """Values a model would train on without a word but wrongly: complex numbers (cast to
    their real part), NaN or infinity (a NaN validation loss that passes, or a "divergence"
    that is the data's fault). Checked once, when the data is coerced at collection."""
    import torch

    for (split, which), t in parts:
        arg = f"data ({split} {which})"
        if t.is_complex():
            raise SpecError(
                "is complex; training would silently keep only the real part", where=where,
                argument=arg, value=str(t.dtype),
                fix="pass real features, e.g. torch.view_as_real(x).flatten(1) (real and "
                "imaginary parts as two features)")
        if t.is_floating_point():
            finite = torch.isfinite(t)
            if not bool(finite.all()):
                bad = (~finite).reshape(t.shape[0], -1).any(dim=1)
                rows = bad.nonzero().flatten()
                first = int(rows[0])
                value = t.reshape(t.shape[0], -1)[first][~finite.reshape(t.shape[0], -1)[first]][0]
                raise SpecError(
                    f"has {int(rows.numel())} rows with NaN or infinity (first: row {first}, "
                    f"value {float(value)})", where=where, argument=arg,
                    value=f"{tuple(t.shape)} {t.dtype}",
                    fix="drop or impute those rows before training (e.g. "
                    "torch.nan_to_num, or keep rows where torch.isfinite(x).all(1))")


#: Samples in each bundled set (scikit-learn's numbers), to check ``n_train`` against.
_SIZES = {"digits": 1797, "breast_cancer": 569, "diabetes": 442, "wine": 178, "iris": 150}


def _check_options(data: DataSpec, where: str) -> None:
    """The options of a bundled set, checked where the experiment can be named (else a bad
    one fails deep inside scikit-learn, or is taken silently)."""
    opts = dict(data.options)
    call = f"hp.datasets.{data.name}"
    vf = opts.get("val_fraction", 0.2)
    if isinstance(vf, bool) or not isinstance(vf, (int, float)) or not 0 < vf < 1:
        raise SpecError("must be a fraction strictly between 0 and 1", where=where,
                        argument=f"{call}(val_fraction=...)", value=vf,
                        fix=f"e.g. {call}(val_fraction=0.2)")
    seed = opts.get("split_seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise SpecError("must be a non-negative int", where=where,
                        argument=f"{call}(split_seed=...)", value=seed,
                        fix=f"e.g. {call}(split_seed=0)")
    n = opts.get("n_train")
    if n is None:
        return
    size = _SIZES.get(data.name)
    available = size - int(math.ceil(size * vf)) if size else None
    if isinstance(n, bool) or not isinstance(n, int) or n <= 0:
        raise SpecError("must be a positive number of training samples", where=where,
                        argument=f"{call}(n_train=...)", value=n,
                        fix=f"e.g. {call}(n_train=300), or leave it out for all "
                        f"{available or ''} training samples".replace("all  ", "all "))
    if available is not None and n > available:
        raise SpecError(
            f"is more than the {available} training samples the split leaves "
            f"({size} samples, val_fraction={vf:g})", where=where,
            argument=f"{call}(n_train=...)", value=n,
            fix=f"use n_train <= {available}, or leave it out")


def coerce_data(data: Any, where: str) -> DataSpec:
    """Turn what the user passed as ``data=`` into a :class:`DataSpec` (validated)."""
    if isinstance(data, DataSpec):
        if data.preloaded is None:
            if data.name in _BUILTINS:
                _check_options(data, where)
            return data
        d = data.preloaded
        return _coerce_pair((d.x_train, d.y_train), (d.x_val, d.y_val), data.task, data.name,
                            where)
    if isinstance(data, _RawTensors):
        return _coerce_pair(data.train, data.val, data.task, data.name, where)
    if isinstance(data, Mapping) and {"train", "val"} <= set(data):
        return _coerce_pair(data["train"], data["val"], data.get("task"), "tensors", where)
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return _coerce_pair(data[0], data[1], None, "tensors", where)
    raise SpecError(
        "is not a data set hpspec can use", where=where, argument="data",
        value=type(data).__name__,
        fix="pass hp.datasets.digits() (or breast_cancer(), diabetes()), or "
        "((x_train, y_train), (x_val, y_val)) tensors",
    )
