"""The experiment DSL: grids, cells, the ``@experiment`` decorator and the ``Case``.

Pure: imports neither torch nor pytest. The decorator only records what the user wrote on the
function (``fn.__hpspec__``); :func:`build` validates it into an :class:`Experiment` at
collection time, where an error can name the file, the function and the argument without
breaking the import of the rest of the file.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import math
import os
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.errors import SpecError
from hpspec.vocabulary import Mode

__all__ = [
    "Grid",
    "Cell",
    "Case",
    "Experiment",
    "RawSpec",
    "grid",
    "cells",
    "experiment",
    "build",
    "format_value",
    "cell_id",
    "Recipe",
]

#: Hyperparameter values must be plain scalars: they become test ids, keys in the store and
#: JSON fields, and are compared with ``==`` by where-clauses.
SCALAR_TYPES = (bool, int, float, str, type(None))
DEFAULT_BATCH_SIZE = 64


def format_value(value: Any) -> str:
    """A hyperparameter value as it appears in a test id: shortest text that round-trips."""
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str) and not value.isprintable():
        # An escape sequence in a value must not reach the terminal raw (via the test id).
        return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii")
                       for c in value)
    return str(value)


def cell_id(params: Mapping[str, Any]) -> str:
    return "-".join(f"{k}={format_value(v)}" for k, v in params.items())


# --------------------------------------------------------------------------------------- grid


@attrs.frozen
class Grid:
    """A list of cells, given as a cartesian product of axes or listed one by one.

    Holds what the user wrote, unchecked: :meth:`expand` validates it, so a mistake shows at
    collection with the experiment's name rather than as an import error.
    """

    axes: tuple[tuple[str, Any], ...] = ()
    listed: tuple[Any, ...] | None = None
    parts: tuple[Grid, ...] = ()

    def __add__(self, other: object) -> Grid:
        if not isinstance(other, Grid):
            return NotImplemented
        return Grid(parts=(*self._pieces(), *other._pieces()))

    def _pieces(self) -> tuple[Grid, ...]:
        return self.parts if self.parts else (self,)

    def __repr__(self) -> str:
        # as the user wrote it (an error shows it: "grids = hp.grid(lr=[0.1, 0.3]) is not an
        # argument of @hp.experiment()"), not the class's fields
        if self.parts:
            return " + ".join(map(repr, self.parts))
        if self.listed is not None:
            return f"hp.cells({', '.join(map(repr, self.listed))})"
        return f"hp.grid({', '.join(f'{k}={v!r}' for k, v in self.axes)})"

    def expand(self, where: str = "") -> list[dict[str, Any]]:
        """Every cell as an ordered dict of hyperparameters; raises :class:`SpecError`."""
        if self.parts:
            out: list[dict[str, Any]] = []
            for part in self.parts:
                out.extend(part.expand(where))
            return out
        if self.listed is not None:
            return _expand_listed(self.listed, where)
        return _expand_product(self.axes, where)


def grid(**axes: Any) -> Grid:
    """The cartesian product of named value lists: ``grid(lr=[1e-3, 1e-2], layers=[1, 2])``."""
    return Grid(axes=tuple(axes.items()))


def cells(*listed: Any) -> Grid:
    """Cells listed explicitly, for grids that are not products:
    ``cells(dict(lr=0.1, layers=1), dict(lr=0.01, layers=4))``. Grids add:
    ``grid(...) + cells(...)``.
    """
    if len(listed) == 1 and isinstance(listed[0], (list, tuple)):
        listed = tuple(listed[0])
    return Grid(listed=tuple(listed))


def _check_scalar(value: Any, where: str, argument: str) -> None:
    if not isinstance(value, SCALAR_TYPES):
        raise SpecError(
            f"is a {type(value).__name__}; hyperparameter values must be numbers, strings, "
            "booleans or None",
            where=where,
            argument=argument,
            value=value,
            fix="name the choice with a string and map it inside the function "
            "(e.g. optimizer=['sgd', 'adam'])",
        )
    if isinstance(value, float) and math.isnan(value):
        raise SpecError(
            "is NaN, which equals nothing, so no where-clause could select it",
            where=where,
            argument=argument,
            value=value,
            fix="remove it from the grid",
        )
    if isinstance(value, float) and math.isinf(value):
        # JSON has no infinity, cell ids and where-clauses would carry 'inf', and an infinite
        # learning rate or size is no experiment: refuse it here rather than at session end.
        raise SpecError(
            "is infinite; hyperparameter values must be finite",
            where=where,
            argument=argument,
            value=value,
            fix="use a large finite number (e.g. 1e9), or a string such as 'none' mapped "
            "inside the function",
        )


#: Names the case answers itself (``case.seed`` is the run seed, ``case.device`` where it
#: trains, ...): a hyperparameter of one of these names would be shadowed without a word, so
#: it is a spec error. ``epochs`` and ``batch_size`` are not here: as grid or fixed names they
#: set the training length and batch, and ``case.epochs`` / ``case.batch_size`` return them.
RESERVED_NAMES = frozenset({"seed", "device", "data", "experiment", "cell_id", "params", "get"})


def _check_name(name: Any, where: str, argument: str) -> None:
    if not isinstance(name, str) or not name.isidentifier():
        raise SpecError(
            "is not a valid hyperparameter name",
            where=where,
            argument=argument,
            value=name,
            fix="use a Python identifier such as 'lr' or 'hidden_size'",
        )
    if name in RESERVED_NAMES or name.startswith("_"):
        raise SpecError(
            f"is the name of the case's own attribute (case.{name} is hpspec's, not a "
            "hyperparameter), so the value would be silently shadowed",
            where=where,
            argument=argument,
            value=name,
            fix=f"rename it, e.g. {'init_' + name.lstrip('_')!r}, and read case.init_"
            f"{name.lstrip('_')}",
        )


def _expand_product(axes: tuple[tuple[str, Any], ...], where: str) -> list[dict[str, Any]]:
    if not axes:
        return [{}]
    names: list[str] = []
    value_lists: list[list[Any]] = []
    for name, values in axes:
        _check_name(name, where, "grid")
        arg = f"grid[{name!r}]"
        if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
            raise SpecError(
                "must be a list of values",
                where=where,
                argument=arg,
                value=values,
                fix=f"write {name}=[{values!r}], or move it to fixed=dict({name}={values!r})",
            )
        values = list(values)
        if not values:
            raise SpecError(
                "is empty, so the grid has no cells",
                where=where,
                argument=arg,
                value=values,
                fix="give at least one value, or remove the axis",
            )
        # (type, value) pairs: 1, 1.0 and True are different cells, 0.0 and -0.0 the same
        # one, as `==` with equal types says; a set makes the check linear (a 10,000-value
        # axis was 50 million comparisons).
        seen: set[tuple[type, Any]] = set()
        for v in values:
            _check_scalar(v, where, arg)
            if (type(v), v) in seen:
                raise SpecError(
                    f"lists {v!r} twice, which would make two identical cells",
                    where=where,
                    argument=arg,
                    value=values,
                    fix="remove the duplicate",
                )
            seen.add((type(v), v))
        names.append(name)
        value_lists.append(values)
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*value_lists)]


def _expand_listed(listed: tuple[Any, ...], where: str) -> list[dict[str, Any]]:
    if not listed:
        raise SpecError(
            "lists no cells",
            where=where,
            argument="cells()",
            fix="pass one dict per cell: cells(dict(lr=0.1), dict(lr=0.01))",
        )
    out = []
    for i, item in enumerate(listed):
        arg = f"cells()[{i}]"
        if not isinstance(item, Mapping):
            raise SpecError(
                "must be a dict of hyperparameters",
                where=where,
                argument=arg,
                value=item,
                fix="write dict(lr=0.1, layers=2)",
            )
        for name, v in item.items():
            _check_name(name, where, arg)
            _check_scalar(v, where, f"{arg}[{name!r}]")
        out.append(dict(item))
    return out


# --------------------------------------------------------------------------------------- cells


@attrs.frozen
class Cell:
    """One point of the grid: its hyperparameters (grid axes first, then ``fixed``)."""

    params: tuple[tuple[str, Any], ...]
    #: Names of the hyperparameters that vary in the grid (they make up the id).
    varying: tuple[str, ...]
    #: A prefix of the id: a search's trial number (``t07``), so ids stay unique and stable.
    label: str = ""

    @property
    def id(self) -> str:
        d = self.as_dict()
        text = cell_id({k: d[k] for k in self.varying})
        if self.label:
            return f"{self.label}-{text}" if text else self.label
        return text or "default"

    def as_dict(self) -> dict[str, Any]:
        return dict(self.params)

    def get(self, name: str, default: Any = None) -> Any:
        return self.as_dict().get(name, default)


class Case:
    """What the experiment function receives for one seed of one cell.

    Hyperparameters read as attributes or keys (``case.lr``, ``case["lr"]``); ``seed``,
    ``device``, ``epochs``, ``batch_size`` and ``data`` (the loaded data set, or None) are
    attributes too.
    """

    __slots__ = ("_params", "seed", "device", "_epochs", "batch_size", "data", "experiment",
                 "_cell_id", "_epochs_seen")

    def __init__(
        self,
        params: Mapping[str, Any],
        *,
        seed: int,
        device: str,
        epochs: int,
        batch_size: int | None,
        data: Any = None,
        experiment: str = "",
        cell_id: str = "",
    ) -> None:
        self._params = dict(params)
        self.seed = seed
        self.device = device
        self._epochs = epochs
        self.batch_size = batch_size
        self.data = data
        self.experiment = experiment
        self._cell_id = cell_id
        self._epochs_seen = False

    @property
    def epochs(self) -> int:
        self._epochs_seen = True
        return self._epochs

    @property
    def cell_id(self) -> str:
        self._seen(None)  # the id spells out an epochs axis
        return self._cell_id

    @property
    def epochs_seen(self) -> bool:
        """Whether the epoch count reached the caller in any way (``case.epochs``, an
        ``epochs`` hyperparameter, ``params``, the id or the repr): a recipe that never saw it
        cannot depend on it, so cells that differ only in epochs share a run without building
        the recipe again to compare."""
        return self._epochs_seen

    def __reduce_ex__(self, protocol: Any) -> Any:
        # copy.copy, copy.deepcopy and pickle take the slots as they are, the epoch count
        # with them, and a read of it from the copy would not reach this case's flag
        self._epochs_seen = True
        return super().__reduce_ex__(protocol)

    def _seen(self, name: str | None) -> None:
        """Note a read of hyperparameter ``name`` (None: of them all)."""
        if name in (None, "epochs") and "epochs" in self._params:
            self._epochs_seen = True

    @property
    def params(self) -> dict[str, Any]:
        self._seen(None)
        return dict(self._params)

    def __getattr__(self, name: str) -> Any:
        params = object.__getattribute__(self, "_params")
        self._seen(name)
        try:
            return params[name]
        except KeyError:
            raise AttributeError(
                f"case has no hyperparameter {name!r}; it has {sorted(params)} "
                "(add it to grid= or fixed= of the experiment)"
            ) from None

    def __getitem__(self, name: str) -> Any:
        self._seen(name)
        try:
            return self._params[name]
        except KeyError:
            raise KeyError(
                f"case has no hyperparameter {name!r}; it has {sorted(self._params)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._params

    def get(self, name: str, default: Any = None) -> Any:
        self._seen(name)
        return self._params.get(name, default)

    def __repr__(self) -> str:
        self._seen(None)
        # Python reprs, as pytest shows the case in a failure: lr='0.1' (a string, say from a
        # grid written lr=["0.1"]) must not read as the number lr=0.1.
        params = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"Case({params}, seed={self.seed}, device={self.device!r})"


# ------------------------------------------------------------------------------- experiments


@attrs.frozen
class RawSpec:
    """What ``@experiment(...)`` was given, unvalidated."""

    kwargs: Mapping[str, Any]
    #: The order in which the ``@experiment(...)`` decorators were made (see ``_DECORATORS``).
    made: int = 0


#: Numbers each ``@experiment(...)`` decorator as it is made, to tell stacked decorators from a
#: function declared again later.
_DECORATORS = itertools.count(1)


def unknown_keyword(unknown: Mapping[str, Any], known: Sequence[str], *, where: str,
                    call: str) -> SpecError:
    """The :class:`SpecError` for keywords ``call`` does not take: the first one, its value,
    and the closest known keyword as the fix (``grids=`` -> ``grid=``)."""
    import difflib

    name, value = next(iter(unknown.items()))
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    if not close:
        close = [k for k in known if k.endswith(name.split("_")[-1])][:1]
    more = f" (also unknown: {', '.join(list(unknown)[1:])})" if len(unknown) > 1 else ""
    fix = (f"did you mean {close[0]}=? " if close else "") + "known: " + ", ".join(known)
    return SpecError(f"is not an argument of {call}(){more}", where=where, argument=name,
                     value=value, fix=fix)


def experiment(
    *positional: Any,
    grid: Grid | None = None,
    fixed: Mapping[str, Any] | None = None,
    epochs: int | None = None,
    batch_size: int | None = None,
    seeds: int | Sequence[int] | Any = 1,
    data: Any = None,
    claims: Sequence[Any] = (),
    metrics: Sequence[str] | None = None,
    name: str | None = None,
    stack: bool = True,
    timeout: float | None = None,
    profiles: Mapping[str, Mapping[str, Any]] | None = None,
    search: Any = None,
    **unknown: Any,
) -> Any:
    """Declare a hyperparameter experiment on a function that takes a :class:`Case`.

    The function either returns a recipe (``model, optimizer`` or :class:`hpspec.Recipe`) and
    hpspec trains it (*recipe mode*), or is a generator that yields a dict of metrics per epoch
    (*loop mode*). The function is returned unchanged; the spec rides on ``fn.__hpspec__``.

    ``stack=False`` trains this experiment's cells one by one even where they could be trained
    together as one stacked model; ``timeout`` is a budget in seconds per cell (all its seeds).
    ``search=hp.random(space, trials=N)`` (or ``hp.sobol``) makes the cells instead of a grid:
    one per trial (see :mod:`hpspec.search`).

    A keyword it does not know (``grids=``) is a :class:`SpecError` of this experiment alone,
    at collection (:func:`build`), not a ``TypeError`` that would break the whole file; so is
    a positional argument (``@hp.experiment(hp.grid(...))``). ``@hp.experiment`` without
    parentheses declares the function with the defaults.
    """
    kwargs = dict(
        grid=grid,
        fixed=fixed,
        epochs=epochs,
        batch_size=batch_size,
        seeds=seeds,
        data=data,
        claims=claims,
        metrics=metrics,
        name=name,
        stack=stack,
        timeout=timeout,
        profiles=profiles,
        search=search,
    )
    if unknown:
        kwargs["unknown"] = unknown
    bare = len(positional) == 1 and inspect.isfunction(positional[0]) and not unknown
    if positional and not bare:
        kwargs["positional"] = positional
    made = next(_DECORATORS)

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        inner: Any = getattr(fn, "__hpspec__", None)
        # Stacked decorators (@hp.experiment(grid=a) over @hp.experiment(grid=b)): Python
        # makes both decorators before the function and applies the inner one first, so the
        # spec already there was made after this one. (A test re-declaring an already declared
        # function, hp.experiment(...)(f), makes its decorator after the first: not this.)
        # The bare @hp.experiment is made as it is applied: over a spec, always stacked.
        twice = isinstance(inner, RawSpec) and (bare or inner.made > made)
        # One function declared again by its own module's top level (small =
        # hp.experiment(grid=a)(train); big = hp.experiment(grid=b)(train)): the second spec
        # would silently replace the first, an experiment lost without a word. (A test or a
        # notebook, __main__, declaring a function again still replaces its spec.)
        again = (isinstance(inner, RawSpec) and not twice
                 and _module_level(sys._getframe(2 if bare else 1), fn))
        extra: dict[str, Any] = ({"twice": inner.kwargs} if twice else
                                 {"again": inner.kwargs} if again else {})
        fn.__hpspec__ = RawSpec({**kwargs, **extra}, made)  # type: ignore[attr-defined]
        return fn

    return decorate(positional[0]) if bare else decorate


def _module_level(frame: Any, fn: Callable[..., Any]) -> bool:
    """Whether ``frame`` (the code that applies a decorator to ``fn``) is the top level of
    ``fn``'s own module, imported under its name (not ``__main__``: a script or notebook)."""
    module = getattr(fn, "__module__", None)
    return (frame is not None and frame.f_code.co_name == "<module>"
            and module not in (None, "__main__") and frame.f_globals.get("__name__") == module)


@attrs.frozen
class Experiment:
    """A validated experiment: everything the runner and the judge need."""

    name: str
    where: str
    fn: Callable[..., Any] = attrs.field(eq=False, repr=False)
    mode: Mode
    cells: tuple[Cell, ...]
    axes: tuple[str, ...]
    fixed: tuple[tuple[str, Any], ...]
    epochs: int | None
    batch_size: int | None
    seeds: tuple[int, ...]
    data: Any = attrs.field(eq=False, repr=False)
    claims: tuple[Any, ...]
    metrics: frozenset[str] | None
    #: ``hpspec.stats.Adaptive`` when seeds are added until cross-cell claims are decided.
    adaptive: Any = None
    #: Whether compatible cells may be trained together as one stacked model.
    stack: bool = True
    #: Seconds a cell (all its seeds) may train before it fails; None: no budget.
    timeout: float | None = None
    #: This experiment's own profiles: name -> overrides (see :func:`register_profile`).
    profiles: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...] = ()
    #: The sampler (``hpspec.search.Sampler``) when the cells are a search's trials.
    search: Any = None

    @property
    def hyperparameters(self) -> tuple[str, ...]:
        """Grid axes, then fixed names."""
        return self.axes + tuple(k for k, _ in self.fixed if k not in self.axes)

    def epochs_for(self, cell: Cell) -> int:
        value = cell.get("epochs", self.epochs)
        assert isinstance(value, int)
        return value

    def batch_size_for(self, cell: Cell) -> int | None:
        return cell.get("batch_size", self.batch_size)

    def cell(self, cid: str) -> Cell:
        for c in self.cells:
            if c.id == cid:
                return c
        raise KeyError(cid)


def location(fn: Callable[..., Any]) -> str:
    """``exp_file.py::function``, the way pytest users read test locations."""
    code = getattr(fn, "__code__", None)
    filename = os.path.basename(code.co_filename) if code else "<unknown>"
    return f"{filename}::{getattr(fn, '__qualname__', repr(fn))}"


def _positive_int(value: Any, where: str, argument: str, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpecError("must be a positive whole number", where=where, argument=argument,
                        value=value, fix=fix)
    return value


def _check_signature(fn: Callable[..., Any], where: str) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = list(sig.parameters.values())
    positional = [
        p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    required_kw = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    required_pos = [p for p in positional if p.default is p.empty]
    if required_kw or len(required_pos) > 1 or (not positional and not varargs):
        shown = f"({', '.join(str(p) for p in params)})"
        raise SpecError(
            "must take exactly one argument, the case",
            where=where,
            argument="signature",
            value=shown,
            fix=f"define it as def {getattr(fn, '__name__', 'fn')}(case): ... "
            "and read hyperparameters as case.lr, case.layers",
        )


#: Seeds go to torch.Generator.manual_seed and into SQLite INTEGER columns: both are int64.
MAX_SEED = 2**63
#: A count beyond this is a typo (seeds=10**9), not an experiment.
MAX_SEED_COUNT = 100_000


def _normalize_seeds(seeds: Any, where: str) -> tuple[int, ...]:
    from hpspec.stats import Adaptive

    fix = "give a count (seeds=3 means seeds 0, 1, 2) or a list of ints (seeds=[0, 7])"
    if isinstance(seeds, Adaptive):
        ok = all(isinstance(x, int) and not isinstance(x, bool) for x in
                 (seeds.min, seeds.max, seeds.step))
        if not ok or not 2 <= seeds.min <= seeds.max or seeds.step < 1:
            raise SpecError("needs 2 <= min <= max and step >= 1", where=where,
                            argument="seeds", value=seeds,
                            fix="e.g. seeds=hp.adaptive(min=3, max=20)")
        return tuple(range(seeds.min))
    if isinstance(seeds, bool):
        raise SpecError("must be a count or a list of seeds", where=where, argument="seeds",
                        value=seeds, fix=fix)
    if isinstance(seeds, int):
        if seeds <= 0:
            raise SpecError("must be at least 1: a cell trained with no seed proves nothing",
                            where=where, argument="seeds", value=seeds, fix=fix)
        if seeds > MAX_SEED_COUNT:  # tuple(range(2**64)) would never return
            raise SpecError(f"is more seeds than hpspec trains for one cell ({MAX_SEED_COUNT})",
                            where=where, argument="seeds", value=seeds,
                            fix="a count such as seeds=5, or hp.adaptive(min=3, max=20)")
        return tuple(range(seeds))
    if isinstance(seeds, (list, tuple)):
        if not seeds:
            raise SpecError("is empty", where=where, argument="seeds", value=seeds, fix=fix)
        if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds):
            raise SpecError("must hold non-negative ints only", where=where, argument="seeds",
                            value=seeds, fix=fix)
        big = [s for s in seeds if s >= MAX_SEED]
        if big:
            # torch's generators and the store's SQLite integers stop at 2**63 - 1
            raise SpecError(f"holds {big[0]}, beyond the largest seed (2**63 - 1)", where=where,
                            argument="seeds", value=seeds,
                            fix="use seeds below 2**63, e.g. seeds=[0, 1, 2]")
        if len(set(seeds)) != len(seeds):
            raise SpecError("repeats a seed", where=where, argument="seeds", value=seeds,
                            fix="list each seed once")
        return tuple(seeds)
    raise SpecError("must be a count or a list of seeds", where=where, argument="seeds",
                    value=seeds, fix=fix)


def build(fn: Callable[..., Any]) -> Experiment:
    """Validate ``fn.__hpspec__`` into an :class:`Experiment`; raises :class:`SpecError`."""
    from hpspec import claims as claims_mod
    from hpspec.datasets import DataSpec, coerce_data

    raw: RawSpec = fn.__hpspec__  # type: ignore[attr-defined]
    where = location(fn)
    kw = dict(raw.kwargs)
    if kw.get("twice") is not None:
        raise SpecError("is applied twice to this function (stacked decorators), and a "
                        "function holds one experiment: the outer one would silently replace "
                        "the inner one", where=where, argument="@hp.experiment",
                        fix="decorate once; put both grids in one hp.grid (grids add: "
                        "grid=hp.grid(...) + hp.grid(...)) or write two functions")
    if kw.get("again") is not None:
        first = kw["again"].get("name") or getattr(fn, "__name__", "experiment")
        raise SpecError(f"declares this function a second time (the first declaration is "
                        f"named {first!r}), and a function holds one experiment: the second "
                        "silently replaces the first, whose cells would never run",
                        where=where, argument="hp.experiment(...)(fn)",
                        fix=f"give each experiment its own function (def "
                        f"{kw['name'] or 'second'}(case): return {fn.__name__}(case)), or put "
                        "both grids in one hp.grid (grids add: grid=hp.grid(...) + "
                        "hp.grid(...))")
    if kw.get("positional"):
        first = kw["positional"][0]
        raise SpecError("is passed by position; @hp.experiment() takes keywords only",
                        where=where, argument="@hp.experiment: positional argument 1",
                        value=first,
                        fix=("write grid=hp.grid(...)" if isinstance(first, Grid) else
                             "name each argument: grid=..., epochs=..., data=..., claims=[...]"))
    if kw.get("unknown"):
        raise unknown_keyword(kw["unknown"], [k for k in kw if k != "unknown"],
                              where=where, call="@hp.experiment")
    name = kw["name"] or getattr(fn, "__name__", "experiment")
    if not isinstance(name, str) or not name:
        raise SpecError("must be a non-empty string", where=where, argument="name", value=name)
    bad = [c for c in ("::", "[", "]") if c in name]
    if bad or not name.isprintable():
        # It becomes part of pytest node ids ("file::name[cell]"): these characters would
        # make the experiment impossible to select by id, -k or --lf.
        raise SpecError(
            f"contains {bad[0]!r}" if bad else "contains control characters",
            where=where, argument="name", value=name,
            fix="use letters, digits, '_', '-' or '.', e.g. name='digits-mlp'")

    if not callable(fn):
        raise SpecError("@hpspec.experiment must decorate a function", where=where,
                        argument="target", value=fn)
    _check_signature(fn, where)
    mode: Mode = "loop" if inspect.isgeneratorfunction(fn) else "recipe"

    g = kw["grid"]
    sampler = kw.get("search")
    labels: list[str] = []
    #: An Optuna search: its trials' values are asked when it runs, so the cells hold only the
    #: fixed values and are named by trial number.
    asked = bool(getattr(sampler, "asked", False))
    if sampler is not None:
        if not hasattr(sampler, "expand_trials"):  # (spec does not import hpspec.search)
            raise SpecError("must be a sampler", where=where, argument="search", value=sampler,
                            fix="write search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1)), "
                            "trials=16)")
        if g is not None:
            raise SpecError("cannot be combined with grid=", where=where, argument="search",
                            value=sampler, fix="search the grid's values with hp.choice([...]) "
                            "in the space, or drop search=")
        sampled = sampler.expand_trials(where)
        labels = [label for label, _ in sampled]
        g = cells(*[params for _, params in sampled])
    if g is None:
        g = Grid()
    if isinstance(g, Mapping):
        g = grid(**g)
    if not isinstance(g, Grid):
        raise SpecError("must be built with hpspec.grid(...) or hpspec.cells(...)",
                        where=where, argument="grid", value=g,
                        fix="write grid=hp.grid(lr=[0.01, 0.1])")
    expanded = g.expand(where)

    fixed = kw["fixed"] or {}
    if not isinstance(fixed, Mapping):
        raise SpecError("must be a dict of hyperparameter values", where=where,
                        argument="fixed", value=fixed, fix="write fixed=dict(layers=2)")
    if sampler is not None:
        both = sorted(set(sampler.space.fixed()) & set(fixed))
        if both:
            raise SpecError("names a value the search space fixes too", where=where,
                            argument="fixed", value=both[0],
                            fix=f"keep {both[0]!r} in one place: the space or fixed")
        fixed = {**sampler.space.fixed(), **fixed}
    for k, v in fixed.items():
        _check_name(k, where, "fixed")
        _check_scalar(v, where, f"fixed[{k!r}]")

    axes: list[str] = []
    for params in expanded:
        for k in params:
            if k not in axes:
                axes.append(k)
    if asked and sampler is not None:
        axes = [k for k, _ in sampler.space.varying()]
    clash = [k for k in axes if k in fixed]
    if clash:
        raise SpecError(
            "names a hyperparameter that is also in the grid",
            where=where, argument="fixed", value={k: fixed[k] for k in clash},
            fix=f"keep {clash[0]!r} in one place: the grid or fixed",
        )
    if expanded and not asked and any(set(p) != set(axes) for p in expanded):
        missing = next(p for p in expanded if set(p) != set(axes))
        raise SpecError(
            "lists cells with different hyperparameter names",
            where=where, argument="grid", value=missing,
            fix=f"give every cell the same names: {axes}",
        )

    cells_: list[Cell] = []
    seen_ids: dict[str, dict[str, Any]] = {}
    # Cells equal as where() compares them (1 == 1.0, but True != 1) yet two cells by id:
    # where(x=1) would select both, a claim over one would be judged over two.
    seen_equal: dict[tuple[Any, ...], dict[str, Any]] = {}
    for i, params in enumerate(expanded):
        full = {**params, **fixed}
        cell = Cell(params=tuple(full.items()), varying=() if asked else tuple(axes),
                    label=labels[i] if labels else "")
        if asked:  # no values yet: the trial number is the id
            cells_.append(cell)
            continue
        if cell.id in seen_ids:
            raise SpecError("lists the same cell twice", where=where, argument="grid",
                            value=params, fix="remove the duplicate cell")
        norm = tuple((k, isinstance(v, bool), v) for k, v in params.items())
        if norm in seen_equal:
            other = seen_equal[norm]
            diff = next(k for k in params if type(params[k]) is not type(other[k]))
            raise SpecError(
                f"and {cell_id(other)} are two cells with equal values ({diff}="
                f"{format_value(params[diff])} == {format_value(other[diff])}), so where("
                f"{diff}=...) could not select one of them", where=where, argument="grid",
                value=cell_id(params),
                fix=f"keep one of {format_value(other[diff])} and {format_value(params[diff])}")
        seen_ids[cell.id] = params
        seen_equal[norm] = params
        cells_.append(cell)

    epochs = kw["epochs"]
    if epochs is not None:
        _positive_int(epochs, where, "epochs", "e.g. epochs=10")
    batch_size = kw["batch_size"]
    if batch_size is not None:
        _positive_int(batch_size, where, "batch_size", "e.g. batch_size=64")
    for cell in cells_:
        for setting, default in (("epochs", epochs), ("batch_size", batch_size)):
            if asked and setting in axes:
                continue  # searched: hpspec.search checked the dimension's range
            value = cell.get(setting, default)
            if setting == "epochs" and value is None:
                if mode == "recipe":
                    raise SpecError(
                        "is missing: hpspec must know how long to train",
                        where=where, argument="epochs", value=None,
                        fix="pass epochs=N to @experiment, or put epochs in the grid",
                    )
                continue
            if value is not None:
                src = "grid" if setting in axes else "fixed" if setting in fixed else setting
                arg = setting if src == setting else f"{src}[{setting!r}]"
                example = 10 if setting == "epochs" else 64
                _positive_int(value, where, arg, f"e.g. {setting}={example}")
    if (mode == "recipe" and batch_size is None and "batch_size" not in axes
            and "batch_size" not in fixed):
        batch_size = DEFAULT_BATCH_SIZE

    seeds = _normalize_seeds(kw["seeds"], where)
    adaptive = kw["seeds"] if not isinstance(kw["seeds"], (int, list, tuple)) else None

    data = kw["data"]
    if data is not None:
        data = coerce_data(data, where)
    if mode == "recipe" and data is None:
        raise SpecError(
            "is missing: recipe mode trains on data hpspec owns",
            where=where, argument="data", value=None,
            fix="pass data=hp.datasets.digits() (or your own (train, val) tensors), "
            "or make the function a generator that yields metrics (loop mode)",
        )

    metrics = kw["metrics"]
    known: frozenset[str] | None
    if metrics is not None:
        if not isinstance(metrics, (list, tuple)) or not all(isinstance(m, str) for m in metrics):
            raise SpecError("must be a list of metric names", where=where, argument="metrics",
                            value=metrics, fix="write metrics=['loss', 'acc']")
        known = frozenset(metrics)
        if mode == "recipe":
            # Recipe mode always records its own metrics; the declared ones are the recipe's
            # custom metrics (Recipe(metrics={...})).
            known |= claims_mod.recipe_metrics(
                data.task if isinstance(data, DataSpec) else None)
    elif mode == "recipe":
        known = claims_mod.recipe_metrics(data.task if isinstance(data, DataSpec) else None)
    else:
        known = None

    claim_list = kw["claims"]
    if isinstance(claim_list, (claims_mod.Claim, claims_mod.Condition)):
        claim_list = [claim_list]
    if not isinstance(claim_list, (list, tuple)):
        raise SpecError("must be a list of claims", where=where, argument="claims",
                        value=claim_list, fix="write claims=[hp.where(lr=0.1).expect(...)]")
    hyper_values: dict[str, list[Any]] = {}
    listed: dict[str, set[Any]] = {}  # the same test as `in` on the list, in linear time
    for cell in cells_:
        for k, v in cell.params:
            values, seen = hyper_values.setdefault(k, []), listed.setdefault(k, set())
            if v not in seen:
                seen.add(v)
                values.append(v)
    for k in axes if asked else ():  # known names, values not known before the search runs
        hyper_values.setdefault(k, [])
    ctx = claims_mod.SpecContext(
        where=where, hyperparameters=hyper_values, metrics=known, seeds=len(seeds), mode=mode,
        cells=tuple(c.as_dict() for c in cells_),
        searched=tuple(axes) if sampler is not None else (),
    )
    if sampler is not None and sampler.halving is not None:
        sampler.halving.check(where, known)
        if mode != "recipe":
            raise SpecError("needs recipe mode: halving stops trials inside hpspec's loop",
                            where=where, argument="search: halving", value=sampler.halving,
                            fix="return (model, optimizer) from the function, or drop halving")
        # a schedule that would never prune, or more brackets than rungs or trials
        most = max((c.get("epochs", kw.get("epochs")) for c in cells_
                    if isinstance(c.get("epochs", kw.get("epochs")), int)), default=None)
        if asked and "epochs" in axes:
            most = sampler.largest("epochs")
        if asked and sampler.halving.brackets != 1:
            raise SpecError("is not run for hp.optuna: Hyperband's brackets would split "
                            "trials Optuna asks in batches, and each asked batch is halved on "
                            "its own", where=where, argument="search: halving",
                            value=f"hp.hyperband(min_epochs={sampler.halving.min_epochs}, "
                            f"eta={sampler.halving.eta}"
                            + (f", brackets={sampler.halving.brackets}"
                               if sampler.halving.brackets is not None else "") + ")",
                            fix="use halving=hp.halving(...) with hp.optuna, or Hyperband with "
                            "hp.random(...) / hp.sobol(...)")
        if most is not None:
            sampler.halving.check_schedule(where, most, len(cells_))
    if sampler is not None and sampler.metric is not None and known is not None \
            and sampler.metric not in known:
        raise SpecError("is a metric this experiment never produces", where=where,
                        argument="search: metric", value=sampler.metric,
                        fix=f"use one of: {', '.join(sorted(known))}")
    if asked and sampler is not None and known is not None \
            and sampler.order_metric() not in known:
        # Optuna is told each trial's value of it: every trial would be told failed
        raise SpecError("is the metric Optuna would be told, and this experiment never "
                        "produces it", where=where, argument="search: metric",
                        value=sampler.order_metric(),
                        fix=f"pass metric= to hp.optuna, one of: {', '.join(sorted(known))}")
    checked = []
    for i, c in enumerate(claim_list):
        if sampler is not None:
            getattr(sampler, "check_claim", lambda *a: None)(c, where, f"claims[{i}]")
        elif hasattr(c, "fresh_seeds"):  # hp.found, compare(higher="found"): a search's best
            raise SpecError("needs a search: it judges the best trial found, and this "
                            "experiment's cells are a grid", where=where,
                            argument=f"claims[{i}]", value=c.describe(),
                            fix="add search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1)), "
                            "trials=16) (or hp.sobol / hp.optuna) instead of grid=, or compare "
                            "grid cells with hp.compare(..., than={...})")
        checked.append(claims_mod.validate_claim(c, ctx, f"claims[{i}]"))

    stack = kw.get("stack", True)
    if not isinstance(stack, bool):
        raise SpecError("must be True or False", where=where, argument="stack", value=stack,
                        fix="stack=False trains the cells one by one")
    timeout = kw.get("timeout")
    if timeout is not None and (
        isinstance(timeout, bool) or not isinstance(timeout, (int, float))
        or not 0 < timeout < float("inf")
    ):
        raise SpecError("must be a positive number of seconds", where=where,
                        argument="timeout", value=timeout, fix="e.g. timeout=60")

    own = kw.get("profiles") or {}
    if not isinstance(own, Mapping):
        raise SpecError("must be a dict of profile name -> overrides", where=where,
                        argument="profiles", value=own,
                        fix="e.g. profiles={'ci': dict(epochs=2, seeds=1)}")
    for pname, overrides in own.items():
        _check_profile(pname, overrides, where, f"profiles[{pname!r}]")

    return Experiment(
        name=name,
        where=where,
        fn=fn,
        mode=mode,
        cells=tuple(cells_),
        axes=tuple(axes),
        fixed=tuple(fixed.items()),
        epochs=epochs,
        batch_size=batch_size,
        seeds=seeds,
        data=data,
        claims=tuple(checked),
        metrics=known,
        adaptive=adaptive,
        stack=stack,
        timeout=float(timeout) if timeout is not None else None,
        profiles=tuple((k, tuple(dict(v).items())) for k, v in own.items()),
        search=sampler,
    )


@attrs.define
class Recipe:
    """What a recipe-mode function returns when it needs more than ``(model, optimizer)``.

    ``loss`` defaults to cross-entropy for classification data and mean squared error for
    regression; ``scheduler`` (any object with ``step()``) is stepped once per epoch.
    ``metrics={"grad_norm": fn}`` adds per-epoch metrics: ``fn(model, data)`` is called after
    each epoch's evaluation (the last step's gradients are still on the parameters) and
    returns a number; name them in ``@experiment(metrics=[...])`` to claim them. A recipe with
    custom metrics trains one by one, not stacked (the functions expect one model).
    """

    model: Any
    optimizer: Any
    loss: Callable[[Any, Any], Any] | None = None
    scheduler: Any = None
    metrics: Mapping[str, Callable[[Any, Any], Any]] | None = None


# ------------------------------------------------------------------------------- profiles

#: Profiles registered with :func:`register_profile` (usually in ``conftest.py``).
PROFILES: dict[str, dict[str, Any]] = {}
_PROFILE_KEYS = ("epochs", "seeds", "grid", "batch_size")


def _check_profile(name: Any, overrides: Any, where: str, arg: str) -> None:
    if not isinstance(name, str) or not name:
        raise SpecError("must be a non-empty string", where=where, argument=arg, value=name)
    if not isinstance(overrides, Mapping):
        raise SpecError("must be a dict of overrides", where=where, argument=arg,
                        value=overrides, fix="e.g. dict(epochs=2, seeds=1, grid={'lr': [0.1]})")
    unknown = sorted(set(overrides) - set(_PROFILE_KEYS))
    if unknown:
        raise SpecError("has an unknown override", where=where, argument=arg,
                        value=unknown[0], fix=f"use: {', '.join(_PROFILE_KEYS)}")
    for key in ("epochs", "seeds", "batch_size"):
        if key in overrides:
            _positive_int(overrides[key], where, f"{arg}[{key!r}]", f"e.g. {key}=2")
    g = overrides.get("grid", {})
    if not isinstance(g, Mapping) or not all(
            isinstance(v, (list, tuple)) and v for v in g.values()):
        raise SpecError("must map axes to non-empty lists of the values to keep", where=where,
                        argument=f"{arg}['grid']", value=g,
                        fix="e.g. grid={'lr': [0.03, 0.3]}")


def register_profile(name: str, **overrides: Any) -> None:
    """A named set of overrides for every experiment, chosen with ``--hpspec-profile NAME``
    (like hypothesis's settings profiles): ``epochs=2``, ``seeds=1``, ``batch_size=...``,
    ``grid={"lr": [0.03, 0.3]}`` (keep only these values of an axis). An experiment's own
    ``profiles={"ci": {...}}`` wins over a registered one of the same name."""
    _check_profile(name, overrides, "register_profile", f"register_profile({name!r})")
    PROFILES[name] = dict(overrides)


def apply_profile(exp: Experiment, name: str) -> tuple[Experiment, list[str]]:
    """The experiment under profile ``name`` (its own, else a registered one, else unchanged),
    and notes on what changed: cells kept, claims dropped because no kept cell is left for
    them."""
    from hpspec import claims as claims_mod

    own = dict(exp.profiles)
    if name in own:
        overrides = dict(own[name])
    elif name in PROFILES:
        overrides = PROFILES[name]
    else:
        return exp, []
    where = exp.where
    cells_ = list(exp.cells)
    for axis, keep in dict(overrides.get("grid", {})).items():
        if getattr(exp.search, "asked", False):
            raise SpecError("cannot keep trials by value: an Optuna search asks its values "
                            "when it runs", where=where, argument=f"profile {name!r}: grid",
                            value=axis, fix="drop grid= from the profile (narrow the space "
                            "instead)")
        if axis not in exp.axes:
            raise SpecError("is not a grid axis of this experiment", where=where,
                            argument=f"profile {name!r}: grid", value=axis,
                            fix=f"use one of: {', '.join(exp.axes) or '(no axes)'}")
        values = {format_value(c.get(axis)) for c in exp.cells}
        for v in keep:
            if format_value(v) not in values:
                raise SpecError("is not a value of that axis", where=where,
                                argument=f"profile {name!r}: grid[{axis!r}]", value=v,
                                fix=f"the grid has {sorted(values)}")
        wanted = {format_value(v) for v in keep}
        cells_ = [c for c in cells_ if format_value(c.get(axis)) in wanted]
    epochs = overrides.get("epochs", exp.epochs)
    batch_size = overrides.get("batch_size", exp.batch_size)
    if "epochs" in overrides and "epochs" in exp.axes:
        raise SpecError("cannot override epochs, a grid axis here", where=where,
                        argument=f"profile {name!r}: epochs", value=overrides["epochs"],
                        fix="restrict it with grid={'epochs': [...]} instead")
    seeds = tuple(range(overrides["seeds"])) if "seeds" in overrides else exp.seeds
    adaptive = None if "seeds" in overrides else exp.adaptive
    hyper: dict[str, list[Any]] = {}
    for c in cells_:
        for k, v in c.params:
            hyper.setdefault(k, [])
            if v not in hyper[k]:
                hyper[k].append(v)
    ctx = claims_mod.SpecContext(where=where, hyperparameters=hyper, metrics=exp.metrics,
                                 seeds=len(seeds), mode=exp.mode,
                                 cells=tuple(c.as_dict() for c in cells_))
    kept, notes = [], []
    for i, claim in enumerate(exp.claims):
        statistical = hasattr(claim, "selects") or getattr(claim, "confidence", None)
        # hp.found and compare(higher="found") train their own fresh seeds: count those
        count = getattr(claim, "seeds", 0) if hasattr(claim, "fresh_seeds") else len(seeds)
        if statistical and count < 2:
            # Said before validation, which refuses a one-seed comparison outright.
            notes.append(f"profile {name!r}: claim {claim.describe()!r} left out (a "
                         "statistical claim cannot be decided with one seed)")
            continue
        try:
            claim.validate(ctx, f"claims[{i}]") if hasattr(claim, "selects") else \
                claims_mod.validate_claim(claim, ctx, f"claims[{i}]")
            if isinstance(claim, claims_mod.CellClaim) and not any(
                    claim.applies_to(c.as_dict()) for c in cells_):
                raise SpecError("selects no kept cell", where=where, argument=f"claims[{i}]")
            kept.append(claim)
        except SpecError:
            notes.append(f"profile {name!r}: claim {claim.describe()!r} left out (its cells "
                         "are not in the profile's grid)")
    if epochs is not None:
        epochs_text = f"{epochs} epochs"
    elif "epochs" in exp.axes and getattr(exp.search, "asked", False):
        epochs_text = "epochs as the search asks them"
    elif "epochs" in exp.axes:  # each cell's own epochs, from the grid
        kept_epochs = sorted({c.get("epochs") for c in cells_})
        epochs_text = f"epochs {', '.join(map(str, kept_epochs))} (a grid axis)"
    else:  # loop mode without epochs=: the function's own loop decides
        epochs_text = "epochs as the function yields them"
    notes.insert(0, f"profile {name!r}: {len(cells_)} of {len(exp.cells)} cells, "
                 f"{len(seeds)} seed(s), {epochs_text}")
    out = attrs.evolve(exp, cells=tuple(cells_), epochs=epochs, batch_size=batch_size,
                       seeds=seeds, adaptive=adaptive, claims=tuple(kept))
    halving = getattr(exp.search, "halving", None)
    if halving is not None and cells_ and (epochs != exp.epochs or len(cells_) != len(exp.cells)):
        # the schedule checked at collection, again on the profile's epochs and trials: a
        # first rung past them would quietly turn halving off
        most = (max(out.epochs_for(c) for c in cells_) if "epochs" not in exp.axes
                or not getattr(exp.search, "asked", False) else exp.search.largest("epochs"))
        try:
            halving.check_schedule(where, most, len(cells_))
        except SpecError as e:
            raise SpecError(f"{e.problem}, under profile {name!r}", where=where,
                            argument=f"profile {name!r}: {e.argument}", value=e.value,
                            fix=f"{e.fix}; or give profile {name!r} more epochs "
                            f"(e.g. epochs={halving.min_epochs + 1})") from None
    return out, notes


def duplicate_name_error(exp: Experiment, first: Experiment) -> SpecError:
    """Two experiments of one file that resolve to the same key: the second would never run
    and its cells would pass on the first one's results."""
    return SpecError(
        f"is also the name of {first.where}; two experiments of one file need different "
        "names (the second would reuse the first one's cells and results)",
        where=exp.where, argument="name", value=exp.name,
        fix=f"give one of them another name=, e.g. name={exp.name + '_2'!r}")


@functools.lru_cache(maxsize=256)
def source_digest(fn: Callable[..., Any]) -> str:
    """A digest of the function's code without its decorator (so a grid or claim edit does
    not change it; those enter cache keys through each cell's own hyperparameters), and of
    what it reads from its own module (:func:`_module_reads`): a constant or a same-file
    helper or model class that changes makes a new key. Cached per function object: every
    seed's cache key asks for it, and an edited file makes a new one."""
    import hashlib

    text = _code_text(fn, strip_decorators=True) + "\n" + "\n".join(_module_reads(fn))
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _code_text(obj: Any, strip_decorators: bool = False) -> str:
    import ast
    import textwrap

    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(obj)))
        node = tree.body[0]
        if strip_decorators and isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            node.decorator_list = []
        return ast.dump(node)
    except (OSError, TypeError, SyntaxError, IndexError):
        if inspect.isclass(obj):  # no source file: its methods' code
            return repr(sorted((k, _code_text(v)) for k, v in vars(obj).items()
                               if hasattr(v, "__code__")))
        code = getattr(obj, "__code__", None)
        return repr((code.co_code, code.co_consts)) if code is not None else repr(obj)


def _global_names(obj: Any) -> set[str]:
    """Names the code of a function (or of a class's methods) may read as globals."""
    codes = []
    if inspect.isclass(obj):
        codes = [v.__code__ for v in vars(obj).values() if hasattr(v, "__code__")]
    elif hasattr(obj, "__code__"):
        codes = [obj.__code__]
    names: set[str] = set()
    while codes:
        code = codes.pop()
        names.update(code.co_names)
        codes.extend(c for c in code.co_consts if hasattr(c, "co_names"))
    return names


def _module_reads(fn: Callable[..., Any]) -> list[str]:
    """What ``fn`` reads from its own module, as text for the cache key: module-level
    constants by value (their repr, when it holds no memory address), and functions and
    classes defined in the same module by source, followed through what they read in turn.
    Imported modules and objects from other modules are left out (their versions are in the
    key through the environment only for torch and hpspec)."""
    module = getattr(fn, "__module__", None)
    g = getattr(fn, "__globals__", {})
    out: list[str] = []
    seen: set[str] = set()
    todo = [fn]
    while todo:
        obj = todo.pop()
        for name in sorted(_global_names(obj)):
            if name in seen or name not in g:
                continue
            seen.add(name)
            v = g[name]
            if inspect.ismodule(v):
                continue
            if inspect.isfunction(v) or inspect.isclass(v):
                if getattr(v, "__module__", None) == module and v is not fn:
                    out.append(f"{name}: {_code_text(v)}")
                    todo.append(v)
                continue
            if callable(v):
                continue
            text = repr(v)
            if " at 0x" not in text and len(text) < 100_000:
                out.append(f"{name} = {text}")
    return sorted(out)
