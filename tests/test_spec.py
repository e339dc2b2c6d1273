from __future__ import annotations

import pytest

import hpspec as hp
from hpspec.errors import SpecError
from hpspec.spec import build, cell_id, format_value


def make(fn_name="exp", **kwargs):
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("data", hp.datasets.digits())

    def f(case):
        return None

    f.__name__ = f.__qualname__ = fn_name
    return hp.experiment(**kwargs)(f)


def test_grid_is_cartesian_product_in_axis_order():
    e = build(make(grid=hp.grid(lr=[0.1, 0.01], act=["relu", "tanh"])))
    assert [c.id for c in e.cells] == [
        "lr=0.1-act=relu",
        "lr=0.1-act=tanh",
        "lr=0.01-act=relu",
        "lr=0.01-act=tanh",
    ]
    assert e.axes == ("lr", "act")


def test_listed_cells_and_grid_addition():
    g = hp.grid(lr=[0.1], layers=[1]) + hp.cells(dict(lr=0.5, layers=4))
    e = build(make(grid=g))
    assert [c.id for c in e.cells] == ["lr=0.1-layers=1", "lr=0.5-layers=4"]


def test_fixed_values_reach_the_cell_but_not_the_id():
    e = build(make(grid=hp.grid(lr=[0.1]), fixed=dict(hidden=32)))
    (cell,) = e.cells
    assert cell.id == "lr=0.1"
    assert cell.as_dict() == {"lr": 0.1, "hidden": 32}


@pytest.mark.parametrize(
    "value, text", [(1e-3, "0.001"), (3e-2, "0.03"), (50.0, "50.0"), (1, "1"), ("relu", "relu"),
                    (True, "True"), (1e-7, "1e-07"), (None, "None")]
)
def test_values_format_as_shortest_round_trip(value, text):
    assert format_value(value) == text


def test_cell_id_joins_params():
    assert cell_id({"lr": 0.03, "activation": "relu"}) == "lr=0.03-activation=relu"


def test_seeds_count_and_list():
    assert build(make(seeds=3)).seeds == (0, 1, 2)
    assert build(make(seeds=[4, 9])).seeds == (4, 9)


def test_batch_size_defaults_to_64_and_can_live_in_the_grid():
    assert build(make()).batch_size == 64
    e = build(make(grid=hp.grid(batch_size=[16, 32])))
    assert [e.batch_size_for(c) for c in e.cells] == [16, 32]


def test_epochs_can_live_in_the_grid():
    e = build(make(grid=hp.grid(epochs=[1, 3]), epochs=None))
    assert [e.epochs_for(c) for c in e.cells] == [1, 3]


def test_generator_function_is_loop_mode_and_needs_no_data():
    @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2)
    def loop(case):
        yield {"loss": 1.0}

    e = build(loop)
    assert e.mode == "loop"
    assert e.metrics is None


def test_recipe_metrics_depend_on_the_task():
    assert build(make()).metrics == {"train_loss", "val_loss", "val_acc"}
    assert build(make(data=hp.datasets.diabetes())).metrics == {"train_loss", "val_loss"}


def test_decorator_returns_the_function_unchanged():
    def f(case):
        return 1

    assert hp.experiment(epochs=1)(f) is f
    assert f(None) == 1


def test_case_reads_params_by_attribute_and_key():
    case = hp.Case({"lr": 0.1}, seed=3, device="cpu", epochs=2, batch_size=8)
    assert case.lr == case["lr"] == 0.1
    assert case.seed == 3 and case.device == "cpu"
    with pytest.raises(AttributeError, match="no hyperparameter 'layers'.*'lr'"):
        _ = case.layers


@pytest.mark.parametrize("how", ["copy", "deepcopy", "pickle"])
def test_a_copy_of_the_case_that_reads_the_epochs_counts_as_seeing_them(how):
    """A recipe that copies its case (to change a value, to hand it to a worker) may read the
    epoch count from the copy: the case it was given must say it was seen, or cells that
    differ only in epochs would share one run although the recipe depends on the count."""
    import copy
    import pickle

    case = hp.Case({"lr": 0.1}, seed=0, device="cpu", epochs=4, batch_size=8)
    other = {"copy": copy.copy, "deepcopy": copy.deepcopy,
             "pickle": lambda c: pickle.loads(pickle.dumps(c))}[how](case)
    assert other.epochs == 4 and other.lr == 0.1
    assert case.epochs_seen
    fresh = hp.Case({"lr": 0.1}, seed=0, device="cpu", epochs=4, batch_size=8)
    assert fresh.lr == 0.1 and not fresh.epochs_seen  # (reading another value is not seeing)


def test_case_repr_tells_a_string_from_a_number():
    # pytest shows the case in a failure: lr=["0.1"] (a string) read Case(lr=0.1, ...), so a
    # TypeError from the optimizer's `lr < 0.0` looked impossible
    case = hp.Case({"lr": "0.1", "layers": 2, "act": "relu"}, seed=0, device="cpu", epochs=1,
                   batch_size=8)
    assert repr(case) == "Case(lr='0.1', layers=2, act='relu', seed=0, device='cpu')"
    assert repr(hp.Case({"lr": 0.1}, seed=1, device="cpu", epochs=1, batch_size=8)) == (
        "Case(lr=0.1, seed=1, device='cpu')")


def test_a_positional_argument_is_that_experiments_spec_error():
    def body(case):
        yield {"val_loss": 1.0}

    fn = hp.experiment(hp.grid(lr=[0.1]), epochs=1)(body)
    with pytest.raises(SpecError, match=r"positional argument 1 = .* is passed by position.*"
                                        r"fix: write grid=hp.grid"):
        build(fn)


def test_the_bare_decorator_declares_the_function_with_the_defaults():
    @hp.experiment
    def bare(case):
        yield {"val_loss": 1.0}

    assert callable(bare) and bare.__name__ == "bare"
    assert bare.__hpspec__.kwargs["seeds"] == 1 and "positional" not in bare.__hpspec__.kwargs
