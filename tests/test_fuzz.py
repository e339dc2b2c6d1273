"""Fuzzing the spec builder: whatever grids, claims and options a user writes, building the
experiment succeeds or raises hpspec's own SpecError, never anything else."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hpspec as hp
from hpspec.spec import apply_profile, build

NAMES = st.sampled_from(["lr", "layers", "act", "batch_size", "epochs", "seed", "x", "", "1a",
                         "val loss", "lr"]) | st.text(max_size=6)
SCALARS = (st.integers(-5, 2000) | st.floats(allow_nan=True, allow_infinity=True)
           | st.text(max_size=5) | st.none() | st.booleans())
ANY = SCALARS | st.lists(SCALARS, max_size=3) | st.dictionaries(st.text(max_size=3), SCALARS,
                                                                 max_size=2) | st.just(object())
VALUES = st.lists(SCALARS, max_size=4) | SCALARS | st.lists(st.lists(SCALARS, max_size=2),
                                                            max_size=2)
METRICS = st.sampled_from(["val_loss", "val_acc", "train_loss", "loss", "acc", ""])


@st.composite
def quantities(draw):
    m = hp.metric(draw(METRICS))
    how = draw(st.sampled_from(["final", "min", "max", "first", "mean", "argmin", "at", "none"]))
    if how == "at":
        return m.at(epoch=draw(ANY))
    if how == "none":
        return m
    q = getattr(m, how)()
    if draw(st.booleans()):
        q = q * draw(SCALARS | st.just(2.0)) if draw(st.booleans()) else q - m.min()
    return q


@st.composite
def conditions(draw):
    kind = draw(st.sampled_from(["cmp", "below", "diverges", "converges", "not", "measure",
                                 "garbage"]))
    if kind == "cmp":
        q = draw(quantities())
        op = draw(st.sampled_from(["<", ">", "<=", ">="]))
        v = draw(ANY | quantities())
        return {"<": q.__lt__, ">": q.__gt__, "<=": q.__le__, ">=": q.__ge__}[op](v)
    if kind == "below":
        r = hp.metric(draw(METRICS)).below(draw(ANY))
        return r.within(epochs=draw(ANY), seconds=draw(st.none() | SCALARS))
    if kind == "diverges":
        return hp.diverges().within(epochs=draw(ANY))
    if kind == "converges":
        return hp.converges(draw(METRICS), fraction=draw(ANY))
    if kind == "not":
        return ~hp.diverges()
    if kind == "measure":
        return hp.measure(draw(st.sampled_from(["peak_memory", "samples_per_s", "joules"]))) < \
            draw(ANY | st.sampled_from(["2 GiB", "lots", "1.5 GB"]))
    return draw(ANY)


@st.composite
def claims(draw):
    kind = draw(st.sampled_from(["where", "expect", "compare", "trend", "best", "raw"]))
    if kind == "where":
        w = hp.where(**draw(st.dictionaries(st.sampled_from(["lr", "act", "nope"]), VALUES,
                                            max_size=2)))
        return w.expect(draw(conditions()), at_least=draw(st.none() | ANY),
                        confidence=draw(st.none() | ANY))
    if kind == "expect":
        return hp.expect(draw(conditions()))
    sel = st.dictionaries(st.sampled_from(["lr", "act", "nope"]), VALUES, max_size=2)
    if kind == "compare":
        return hp.compare(draw(quantities() | ANY), lower=draw(sel), than=draw(sel),
                          margin=draw(st.just(0.0) | ANY))
    if kind == "trend":
        return hp.trend(draw(quantities()), over=draw(NAMES), increasing=draw(st.booleans()))
    if kind == "best":
        return hp.best(draw(quantities()), cell=draw(sel))
    return draw(ANY)


def _data(draw):
    kind = draw(st.sampled_from(["digits", "diabetes", "none", "text", "tensors"]))
    if kind == "digits":
        return hp.datasets.digits()
    if kind == "diabetes":
        return hp.datasets.diabetes()
    if kind == "none":
        return None
    if kind == "text":
        return "digits"
    shape = draw(st.lists(st.integers(0, 4), min_size=1, max_size=3))
    n = draw(st.integers(0, 5))
    return ((torch.zeros(*shape), torch.zeros(n)), (torch.zeros(*shape), torch.zeros(n)))


@st.composite
def specs(draw):
    grid = hp.grid(**draw(st.dictionaries(NAMES.filter(str.isidentifier), VALUES,
                                          max_size=3)))
    kwargs = dict(
        grid=draw(st.just(grid) | ANY),
        fixed=draw(st.none() | st.dictionaries(NAMES, SCALARS, max_size=2) | ANY),
        epochs=draw(st.none() | ANY),
        batch_size=draw(st.none() | ANY),
        seeds=draw(st.integers(-1, 4) | ANY | st.just(hp.adaptive(min=3, max=6))),
        data=_data(draw),
        claims=draw(st.lists(claims(), max_size=3) | ANY),
        metrics=draw(st.none() | st.lists(st.text(max_size=4), max_size=2) | ANY),
        name=draw(st.none() | ANY),
        stack=draw(st.booleans() | ANY),
        timeout=draw(st.none() | ANY),
        profiles=draw(st.none() | st.dictionaries(st.text(max_size=3), ANY, max_size=2)),
    )
    generator = draw(st.booleans())
    return kwargs, generator


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(specs())
def test_building_any_spec_raises_only_spec_errors(drawn):
    kwargs, generator = drawn

    if generator:
        def fuzzed(case):
            yield {"loss": 1.0}
    else:
        def fuzzed(case):
            return None

    try:
        exp = build(hp.experiment(**kwargs)(fuzzed))
    except hp.SpecError as e:
        assert e.where and "fuzzed" in e.where
        return
    # a spec that builds is consistent: cells have ids, seeds are non-negative ints
    assert all(isinstance(c.id, str) for c in exp.cells)
    assert all(isinstance(s, int) and s >= 0 for s in exp.seeds)
    for name, _ in exp.profiles:
        try:
            apply_profile(exp, name)
        except hp.SpecError:
            pass


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12))
def test_option_parsers_raise_only_argparse_errors(value, other):
    import argparse

    from hpspec import plugin

    for parse in (plugin.parse_device, plugin.parse_table, plugin.parse_confidence,
                  plugin.parse_columns, plugin.parse_timeout, plugin.parse_limits_option,
                  plugin.parse_cache, plugin.parse_stack, plugin.parse_holm):
        try:
            parse(value + other)
        except argparse.ArgumentTypeError as e:
            assert str(e).startswith("--hpspec-")


def test_nan_values_in_grids_are_refused_and_named():
    with pytest.raises(hp.SpecError, match=r"grid\['lr'\] = nan is NaN.*fix: remove it"):
        build(hp.experiment(grid=hp.grid(lr=[math.nan]), epochs=1,
                            data=hp.datasets.digits())(lambda case: None))
