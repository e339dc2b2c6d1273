"""Every broken spec named in the core issue gives a SpecError naming file::function, the
argument, the value and a fix."""

from __future__ import annotations

import pytest
import torch

import hpspec as hp
from hpspec.spec import build

LOC = "test_bad_specs.py::"


def spec(**kwargs):
    """``stacked_under=dict(...)``: a second @hp.experiment(...) under this one, as stacked
    decorators apply (both made first, the inner one applied first)."""
    inner_kwargs = kwargs.pop("stacked_under", None)
    kwargs.setdefault("epochs", 2)
    kwargs.setdefault("data", hp.datasets.digits())
    if "search" not in kwargs:
        kwargs.setdefault("grid", hp.grid(lr=[0.1, 0.01]))

    def bad_exp(case):
        return None

    outer = hp.experiment(**kwargs)
    if inner_kwargs is not None:
        return outer(hp.experiment(**inner_kwargs)(bad_exp))
    return outer(bad_exp)


CASES = [
    ("non-list grid value", dict(grid=hp.grid(lr=0.1)), "grid['lr'] = 0.1", "lr=[0.1]"),
    ("string grid value", dict(grid=hp.grid(act="relu")), "grid['act'] = 'relu'", "act=['relu']"),
    ("empty grid values", dict(grid=hp.grid(lr=[])), "grid['lr'] = []", "at least one value"),
    ("object in grid", dict(grid=hp.grid(opt=[object])), "grid['opt']", "string"),
    ("duplicate grid values", dict(grid=hp.grid(lr=[0.1, 0.1])), "twice", "duplicate"),
    ("unknown where name",
     dict(claims=[hp.where(lrr=0.1).expect(hp.diverges())]), "where(lrr=...) = 'lrr'",
     "one of: lr"),
    ("where value not in grid",
     dict(claims=[hp.where(lr=0.3).expect(hp.diverges())]), "= 0.3 matches no cell",
     "[0.1, 0.01]"),
    ("unknown metric",
     dict(claims=[hp.expect(hp.metric("val_accuracy").final() > 0.9)]), "'val_accuracy'",
     "val_acc"),
    ("metric absent for regression",
     dict(data=hp.datasets.diabetes(), claims=[hp.expect(hp.metric("val_acc") > 0.9)]),
     "'val_acc'", "train_loss, val_loss"),
    ("epochs zero", dict(epochs=0), "epochs = 0", "epochs=10"),
    ("epochs negative", dict(epochs=-3), "epochs = -3", "positive"),
    ("epochs in grid zero", dict(grid=hp.grid(epochs=[0, 1])), "grid['epochs'] = 0", "positive"),
    ("seeds zero", dict(seeds=0), "seeds = 0", "seeds=3"),
    ("seeds empty list", dict(seeds=[]), "seeds = []", "list of ints"),
    ("batch size zero", dict(batch_size=0), "batch_size = 0", "batch_size=64"),
    ("at_least above seeds",
     dict(seeds=2, claims=[hp.expect(hp.diverges(), at_least=3)]), "at_least = 3", "seeds"),
    ("claim is a bool", dict(claims=[True]), "claims[0] = True", "quantity"),
    ("claim is where without expect", dict(claims=[hp.where(lr=0.1)]), "no expectation",
     ".expect("),
    ("threshold not a number",
     dict(claims=[hp.expect(hp.metric("val_loss").final() < "0.3")]), "threshold", "number"),
    ("missing data", dict(data=None), "data = None", "hp.datasets.digits()"),
    ("data of the wrong type", dict(data="digits"), "data = 'str'", "hp.datasets.digits()"),
    ("data x/y length mismatch",
     dict(data=((torch.zeros(10, 3), torch.zeros(9, dtype=torch.long)),
                (torch.zeros(4, 3), torch.zeros(4, dtype=torch.long)))),
     "data (train x.shape) = (10, 3)", "same number of rows"),
    ("data 1-D features",
     dict(data=((torch.zeros(10), torch.zeros(10)), (torch.zeros(4), torch.zeros(4)))),
     "data (train x.shape) = (10,)", "reshape"),
    ("train/val feature mismatch",
     dict(data=((torch.zeros(10, 3), torch.zeros(10)), (torch.zeros(4, 5), torch.zeros(4)))),
     "data (val x.shape) = (4, 5)", "same feature shape"),
    ("fixed clashes with grid", dict(fixed=dict(lr=0.3)), "fixed = {'lr': 0.3}", "one place"),
    ("grid not a Grid", dict(grid=[0.1, 0.2]), "grid = [0.1, 0.2]", "hp.grid"),
    ("grid value a list", dict(grid=hp.grid(hidden=[[64, 64]])), "grid['hidden'] = [64, 64]",
     "optimizer=['sgd', 'adam']"),
    ("batch size fractional", dict(batch_size=32.5), "batch_size = 32.5", "batch_size=64"),
    ("negative seed", dict(seeds=[-1]), "seeds = [-1]", "seeds=[0, 7]"),
    ("adaptive min above max", dict(seeds=hp.adaptive(min=5, max=3)), "seeds = Adaptive",
     "hp.adaptive(min=3, max=20)"),
    ("metrics not a list", dict(metrics="loss"), "metrics = 'loss'", "['loss', 'acc']"),
    ("metrics a number", dict(metrics=3), "metrics = 3", "['loss', 'acc']"),
    ("stack not a bool", dict(stack="yes"), "stack = 'yes'", "stack=False"),
    ("negative timeout", dict(timeout=-1), "timeout = -1", "timeout=60"),
    ("profiles not a dict", dict(profiles=["ci"]), "profiles = ['ci']", "profiles={'ci'"),
    ("profile unknown override", dict(profiles={"ci": {"lr": 0.1}}),
     "profiles['ci'] = 'lr' has an unknown override", "epochs, seeds, grid"),
    ("confidence and at_least conflict",
     dict(seeds=3, claims=[hp.expect(hp.metric("val_loss").final() < 1, at_least=2,
                                     confidence=0.9)]),
     "confidence = 0.9 cannot be combined with at_least", "at_least= (count of seeds)"),
    ("within zero epochs",
     dict(claims=[hp.expect(hp.metric("val_loss").below(0.3).within(epochs=0))]),
     "within(epochs=...) = 0", ".within(epochs=5)"),
    ("impossible accuracy", dict(claims=[hp.expect(hp.metric("val_acc").final() > 1.5)]),
     "can never hold: val_acc is [0, 1]", "0.95, not 95"),
    ("impossible loss target",
     dict(claims=[hp.expect(hp.metric("val_loss").below(-0.1).within(epochs=2))]),
     "can never hold: val_loss is >= 0", "check the threshold"),
    ("NaN threshold", dict(claims=[hp.expect(hp.metric("val_loss").final() < float("nan"))]),
     "finite number", "compare with a number"),
    ("at epoch zero", dict(claims=[hp.expect(hp.metric("val_loss").at(epoch=0) < 1)]),
     "at(epoch=...) = 0", ".at(epoch=1)"),
    ("converges fraction above one", dict(claims=[hp.expect(hp.converges(fraction=2))]),
     "converges(fraction=...) = 2", "fraction=0.5"),
    ("compare a cell with itself",
     dict(claims=[hp.compare(hp.metric("val_loss"), lower={"lr": 0.1}, than={"lr": 0.1})]),
     "selects the same cell on both sides", "disjoint"),
    ("trend over an unknown axis", dict(claims=[hp.trend(hp.metric("val_loss"), over="depth")]),
     "over = 'depth'", "use one of: lr"),
    ("trend over strings",
     dict(grid=hp.grid(lr=[0.1, 0.2], act=["relu", "tanh"]),
          claims=[hp.trend(hp.metric("val_loss"), over="act")]),
     "over = 'act' must be numeric", "ordered axis"),
    ("best of a cell the grid lacks",
     dict(claims=[hp.best(hp.metric("val_acc"), cell={"lr": 0.5})]), "= 0.5 matches no cell",
     "the grid has lr in"),
    ("unknown measurement", dict(claims=[hp.expect(hp.measure("joules") < 5)]),
     "measure(...) = 'joules'", "samples_per_s"),
    ("grid axis named seed", dict(grid=hp.grid(seed=[1, 2])), "grid = 'seed' is the name of "
     "the case's own attribute", "'init_seed'"),
    ("grid axis named device", dict(grid=hp.grid(device=["cpu", "cuda"])),
     "grid = 'device' is the name of the case's own attribute", "case.init_device"),
    ("fixed named data", dict(fixed=dict(data="mnist")), "fixed = 'data'", "'init_data'"),
    ("fixed named params", dict(fixed=dict(params=3)), "fixed = 'params'", "rename it"),
    ("listed cell named cell_id", dict(grid=hp.cells(dict(cell_id=1), dict(cell_id=2))),
     "= 'cell_id' is the name of the case's own attribute", "rename it"),
    ("grid axis named experiment", dict(grid=hp.grid(experiment=["a", "b"])),
     "grid = 'experiment'", "rename it"),
    ("grid axis named get", dict(grid=hp.grid(get=[1, 2])), "grid = 'get'", "rename it"),
    ("private grid axis", dict(grid=hp.grid(_params=[1, 2])), "grid = '_params'", "rename it"),
    ("name with ::", dict(name="a::b"), "name = 'a::b' contains '::'", "name='digits-mlp'"),
    ("name with brackets", dict(name="mlp[wide]"), "name = 'mlp[wide]' contains '['",
     "letters, digits"),
    ("name with a tab", dict(name="my\texp"), "name = 'my\\texp' contains control",
     "letters, digits"),
    ("name with an escape", dict(name="x\x1b[2J"), "name = ", "letters, digits"),
    ("NaN only in validation features",
     dict(data=((torch.zeros(10, 3), torch.zeros(10, dtype=torch.long)),
                (torch.tensor([[0.0, 1, 2], [0, float("nan"), 0]]),
                 torch.zeros(2, dtype=torch.long)))),
     "data (val x) = '(2, 3) torch.float32' has 1 rows with NaN or infinity (first: row 1, "
     "value nan)", "torch.nan_to_num"),
    ("inf in training features",
     dict(data=((torch.tensor([[1.0], [float("inf")], [2.0]]), torch.zeros(3, dtype=torch.long)),
                (torch.zeros(2, 1), torch.zeros(2, dtype=torch.long)))),
     "data (train x) = '(3, 1) torch.float32' has 1 rows with NaN or infinity (first: row 1, "
     "value inf)", "drop or impute"),
    ("NaN in regression targets",
     dict(data=((torch.zeros(3, 2), torch.tensor([1.0, float("nan"), 0.0])),
                (torch.zeros(2, 2), torch.zeros(2))), claims=[]),
     "data (train y)", "drop or impute"),
    ("complex features",
     dict(data=((torch.zeros(4, 2, dtype=torch.complex64), torch.zeros(4, dtype=torch.long)),
                (torch.zeros(2, 2, dtype=torch.complex64), torch.zeros(2, dtype=torch.long)))),
     "data (train x) = 'torch.complex64' is complex", "torch.view_as_real"),
    ("validation class never trained",
     dict(data=((torch.zeros(4, 2), torch.tensor([0, 1, 2, 9])),
                (torch.zeros(3, 2), torch.tensor([0, 12, 1])))),
     "data (val y) = 12 has class 12 (first at row 1), which no training sample has: the "
     "training labels are 0..9", "stratified split"),
    ("n_train zero", dict(data=hp.datasets.digits(n_train=0)),
     "hp.datasets.digits(n_train=...) = 0 must be a positive number", "n_train=300"),
    ("n_train negative", dict(data=hp.datasets.diabetes(n_train=-5), claims=[]),
     "hp.datasets.diabetes(n_train=...) = -5", "n_train=300"),
    ("n_train above the split", dict(data=hp.datasets.iris(val_fraction=0.5).__class__(
        "iris", "classification", (("val_fraction", 0.5), ("split_seed", 0), ("n_train", 100)))),
     "is more than the 75 training samples", "n_train <= 75"),
    ("val_fraction zero", dict(data=hp.datasets.digits(val_fraction=0)),
     "hp.datasets.digits(val_fraction=...) = 0 must be a fraction strictly between 0 and 1",
     "val_fraction=0.2"),
    ("val_fraction above one", dict(data=hp.datasets.wine(val_fraction=1.5)),
     "val_fraction=...) = 1.5", "val_fraction=0.2"),
    ("split_seed negative", dict(data=hp.datasets.digits(split_seed=-1)),
     "split_seed=...) = -1", "split_seed=0"),
    ("int and float of one value", dict(grid=hp.grid(x=[1, 1.0, 2])),
     "grid = 'x=1.0' and x=1 are two cells with equal values (x=1.0 == 1)", "keep one of 1"),
    ("int and float in listed cells",
     dict(grid=hp.cells(dict(x=2, y="a"), dict(x=2.0, y="a"))),
     "are two cells with equal values (x=2.0 == 2)", "keep one of 2 and 2.0"),
    ("size that is not a size", dict(claims=[hp.expect(hp.peak_memory() < "lots")]),
     "'lots' is not a size", "'2 GiB'"),
    ("seed beyond 2**63", dict(seeds=[0, 2**64]), "beyond the largest seed", "below 2**63"),
    ("seed count beyond reason", dict(seeds=2**70), "more seeds than", "seeds=5"),
    ("infinite grid value", dict(grid=hp.grid(lr=[0.1, float("inf")])), "grid['lr'] = inf",
     "finite"),
    ("infinite fixed value", dict(fixed=dict(clip=float("-inf"))), "is infinite", "finite"),
    ("a bool instead of a condition", dict(claims=[hp.expect(0.3 < 1.0)]),
     "expect(...) = True is a bool, not a condition: Python evaluated a comparison",
     "hp.measure('params') == 26122"),
    # searches (hpspec/search.py)
    ("search empty choice",
     dict(search=hp.random(hp.space(layers=hp.choice([])), trials=4)),
     "space['layers'] = [] is an empty choice", "hp.choice([1, 2])"),
    ("search low above high",
     dict(search=hp.random(hp.space(lr=hp.uniform(0.5, 0.1)), trials=4)),
     "space['lr'] = (0.5, 0.1) has low > high", "low=0.1, high=0.5"),
    ("search empty range",
     dict(search=hp.random(hp.space(lr=hp.uniform(0.1, 0.1)), trials=4)),
     "empty range", "fixed value"),
    ("search log of zero",
     dict(search=hp.sobol(hp.space(lr=hp.loguniform(0.0, 1.0)), trials=4)),
     "space['lr'] = (0.0, 1.0) is log-scaled, so low must be > 0", "positive low bound"),
    ("search int range of floats",
     dict(search=hp.random(hp.space(layers=hp.intrange(1, 2.5)), trials=4)),
     "needs whole numbers", "hp.intrange(1, 4)"),
    ("search zero trials",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=0)),
     "search: trials = 0", "trials=16"),
    ("search not a sampler", dict(search=hp.space(lr=hp.loguniform(1e-3, 1.0))),
     "search = Space", "hp.random("),
    ("search with a grid",
     dict(grid=hp.grid(lr=[0.1]), search=hp.random(hp.space(wd=hp.uniform(0, 1)), trials=2)),
     "cannot be combined with grid=", "hp.choice"),
    ("search unknown name in a claim",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4),
          claims=[hp.where(layers=2).expect(hp.diverges())]),
     "where(layers=...) = 'layers' names an unknown hyperparameter", "use one of: lr"),
    ("search baseline with an unknown name",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4),
          claims=[hp.compare(hp.metric("val_acc"), higher="found", than={"lrr": 0.01})]),
     "than['lrr'] = 'lrr' names an unknown hyperparameter", "use one of: lr"),
    ("search baseline missing a searched name",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0), wd=hp.uniform(0, 0.1)),
                           trials=4),
          claims=[hp.compare(hp.metric("val_acc"), higher="found", than={"lr": 0.01})]),
     "leaves hyperparameters of the space unset", "baseline's wd"),
    ("found with an unknown metric",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4),
          claims=[hp.found(hp.metric("val_accuracy").final() > 0.9)]),
     "'val_accuracy'", "val_acc"),
    ("halving eta one",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.halving(eta=1))),
     "halving: eta = 1", "hp.halving(min_epochs=1, eta=3)"),
    ("halving on an unknown metric",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.halving(metric="accuracy"))),
     "halving: metric = 'accuracy'", "val_acc"),
    ("halving that never prunes",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.halving(min_epochs=2, metric="val_loss"))),
     "halving: min_epochs = 2 would never prune", "use min_epochs < 2"),
    ("hyperband with no bracket",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(brackets=0))),
     "halving: brackets = 0 must be a whole number >= 1", "brackets=2"),
    ("hyperband with a fraction of a bracket",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(brackets=1.5))),
     "halving: brackets = 1.5", "hp.hyperband(min_epochs=1, eta=3)"),
    ("hyperband eta one",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(eta=1))),
     "halving: eta = 1", "hp.hyperband(min_epochs=1, eta=3)"),
    ("hyperband min_epochs zero",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(min_epochs=0))),
     "halving: min_epochs = 0", "hp.hyperband(min_epochs=1, eta=3)"),
    ("hyperband min_epochs past the epochs",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(min_epochs=3))),
     "halving: min_epochs = 3 would never prune", "use min_epochs < 2"),
    ("hyperband with more brackets than rungs",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(min_epochs=1, eta=3, brackets=3))),
     "halving: brackets = 3 asks for more brackets than there are starting rungs",
     "use brackets <= 2"),
    ("hyperband with fewer trials than brackets",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=1,
                           halving=hp.hyperband(min_epochs=1, eta=3))),
     "search: trials = 1 is fewer than the 2 Hyperband brackets", "trials >= 2"),
    ("halving with one trial",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=1,
                           halving=hp.halving(min_epochs=1, eta=2))),
     "search: trials = 1 would never prune", "use trials >= 2"),
    ("sobol halving with one trial",
     dict(search=hp.sobol(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=1,
                          halving=hp.halving(min_epochs=1, eta=2))),
     "search: trials = 1 would never prune", "use trials >= 2"),
    ("found in a grid experiment",
     dict(claims=[hp.found(hp.metric("val_acc").final() > 0.5)]),
     "claims[0] = 'the best configuration found", "add search=hp.random("),
    ("compare with the best found in a grid experiment",
     dict(claims=[hp.compare(hp.metric("val_acc").final(), higher="found", than={"lr": 0.1})]),
     "needs a search", "add search=hp.random("),
    # hp.optuna (hpspec/optuna_search.py)
    ("optuna unknown sampler",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4, sampler="bayes")),
     "search: sampler = 'bayes' is not a sampler hp.optuna knows",
     "'tpe', 'cmaes', 'random', 'qmc'"),
    ("optuna batch zero",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4, batch=0)),
     "search: batch = 0 must be a whole number >= 1", "batch=4"),
    ("optuna batch fractional",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4, batch=2.5)),
     "search: batch = 2.5", "batch=4"),
    ("optuna halving with batches of one",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4, batch=1,
                           halving=hp.halving(min_epochs=1, eta=2))),
     "search: batch = 1 would never prune", "batch=4"),
    ("optuna halving with one trial",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=1,
                           halving=hp.halving(min_epochs=1, eta=2))),
     "search: trials = 1 would never prune", "use trials >= 2"),
    ("optuna random sampler halving with one trial",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=1, sampler="random",
                           halving=hp.halving(min_epochs=1, eta=2))),
     "search: trials = 1 would never prune", "use trials >= 2"),
    ("optuna zero trials",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=0)),
     "search: trials = 0", "trials=16"),
    ("optuna epochs searched over floats",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0), epochs=hp.uniform(1, 4)),
                           trials=4)),
     "space['epochs'] = 'uniform(1, 4)' must be searched over whole numbers", "hp.choice([4, 8])"),
    ("optuna cmaes on choices only",
     dict(search=hp.optuna(hp.space(act=hp.choice(["relu", "tanh"])), trials=4,
                           sampler="cmaes")),
     "search: sampler = 'cmaes' would sample every trial at random", "sampler='tpe'"),
    ("optuna claim selecting a searched value",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4),
          claims=[hp.where(lr=0.01).expect(hp.diverges())]),
     "where(lr=...) = 'lr' selects trials by a value Optuna decides", "hp.found("),
    ("optuna compare between trials",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4),
          claims=[hp.compare(hp.metric("val_loss").final(), lower={"lr": 0.01},
                             than={"lr": 0.1})]),
     "picks trials by their values, which Optuna decides", "higher='found'"),
    ("optuna with hyperband brackets",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(min_epochs=1, eta=2))),
     "halving = 'hp.hyperband(min_epochs=1, eta=2)' is not run for hp.optuna", "hp.halving("),
    # misspelled keywords: this experiment's SpecError at collection, not a TypeError at import
    ("experiment misspelled keyword", dict(grids=hp.grid(lr=[0.1])),
     "grids = hp.grid(lr=[0.1]) is not an argument", "did you mean grid=?"),
    ("experiment two unknown keywords", dict(epoch=3, sead=1),
     "epoch = 3 is not an argument of @hp.experiment() (also unknown: sead)",
     "did you mean epochs=?"),
    ("random n_trials",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), n_trials=4)),
     "n_trials = 4 is not an argument of hp.random()", "did you mean trials=?"),
    ("sobol n_trials",
     dict(search=hp.sobol(hp.space(lr=hp.loguniform(1e-3, 1.0)), n_trials=4)),
     "n_trials = 4 is not an argument of hp.sobol()", "did you mean trials=?"),
    ("optuna n_trials",
     dict(search=hp.optuna(hp.space(lr=hp.loguniform(1e-3, 1.0)), n_trials=4)),
     "n_trials = 4 is not an argument of hp.optuna()", "did you mean trials=?"),
    ("halving min_epoch",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.halving(min_epoch=1))),
     "min_epoch = 1 is not an argument of hp.halving()", "did you mean min_epochs=?"),
    ("hyperband bracket",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)), trials=4,
                           halving=hp.hyperband(bracket=2))),
     "bracket = 2 is not an argument of hp.hyperband()", "did you mean brackets=?"),
    ("search without trials",
     dict(search=hp.random(hp.space(lr=hp.loguniform(1e-3, 1.0)))),
     "trials = None must be a whole number", "trials="),
    ("experiment decorated twice",
     dict(stacked_under=dict(grid=hp.grid(lr=[0.3]), epochs=2, data=hp.datasets.digits())),
     "@hp.experiment: is applied twice to this function",
     "decorate once; put both grids in one hp.grid"),
    ("search space value a list",
     dict(search=hp.random(hp.space(lr=[0.1, 0.3]), trials=4)),
     "space['lr'] = [0.1, 0.3] is neither a dimension", "hp.choice([0.1, 0.3])"),
]


@pytest.mark.parametrize("kwargs, where_text, fix_text", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_spec_names_location_argument_value_and_fix(kwargs, where_text, fix_text):
    with pytest.raises(hp.SpecError) as info:
        build(spec(**kwargs))
    msg = str(info.value)
    assert msg.startswith(LOC + "spec.<locals>.bad_exp: "), msg
    assert where_text in msg, msg
    assert "fix:" in msg and fix_text in msg, msg


@pytest.mark.parametrize(
    "signature",
    ["def f(): pass", "def f(case, other): pass", "def f(*, case): pass"],
)
def test_wrong_signature(signature):
    ns: dict = {}
    exec(signature, ns)
    fn = hp.experiment(epochs=1, data=hp.datasets.digits())(ns["f"])
    with pytest.raises(hp.SpecError, match=r"signature = .* must take exactly one argument.*"
                       r"def f\(case\)"):
        build(fn)


def test_chained_comparison_is_refused_with_advice():
    with pytest.raises(TypeError, match="two claims"):
        0.1 < hp.metric("val_loss").final() < 0.5  # noqa: B015


def test_epochs_and_batch_size_are_allowed_axes_and_the_case_returns_the_cell_value():
    exp = build(spec(grid=hp.grid(epochs=[1, 3], batch_size=[16, 32])))
    from hpspec.spec import Case

    for cell in exp.cells:
        case = Case(cell.as_dict(), seed=0, device="cpu", epochs=exp.epochs_for(cell),
                    batch_size=exp.batch_size_for(cell))
        assert case.epochs == cell.get("epochs") and case.batch_size == cell.get("batch_size")


def test_stacked_decorators_are_a_spec_error_and_declaring_again_later_is_not():
    data = hp.datasets.digits()

    @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=data)
    @hp.experiment(grid=hp.grid(lr=[0.3]), epochs=1, data=data)
    def stacked(case):
        return None

    @hp.experiment
    @hp.experiment(grid=hp.grid(lr=[0.3]), epochs=1, data=data)
    def bare_over(case):
        return None

    @hp.experiment(grid=hp.grid(lr=[0.3]), epochs=1, data=data)
    @hp.experiment
    def bare_under(case):
        return None

    for fn in (stacked, bare_over, bare_under):
        with pytest.raises(hp.SpecError, match=r"::.*" + fn.__name__ + r": @hp.experiment: is "
                           r"applied twice.*fix: decorate once; put both grids in one hp.grid"
                           r".* or write two functions"):
            build(fn)

    # One decorator applied to two functions, and a function declared again later (as tests
    # do): each function holds the last spec, no error.
    once = hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, data=data)

    def f(case):
        return None

    def g(case):
        return None

    assert build(once(f)).cells[0].as_dict() == {"lr": 0.1}
    assert build(once(g)).cells[0].as_dict() == {"lr": 0.1}
    again = hp.experiment(grid=hp.grid(lr=[0.5]), epochs=1, data=data)(f)
    assert build(again).cells[0].as_dict() == {"lr": 0.5}


def test_one_function_declared_twice_at_its_modules_top_level_is_a_spec_error(tmp_path):
    # small = hp.experiment(grid=a)(train); big = hp.experiment(grid=b)(train): the second
    # spec replaced the first on the one function, and the first experiment's cells silently
    # never ran (collection saw one experiment). Declared once that way, it is fine.
    import importlib.util
    import sys

    from hpspec.spec import build

    body = (
        "import hpspec as hp\n\n\n"
        "def train(case):\n"
        "    yield {'loss': 1.0}\n\n\n"
        "small = hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, name='small')(train)\n"
    )
    for name, text in (("hpspec_reuse_once", body),
                       ("hpspec_reuse_twice", body + "big = hp.experiment(grid=hp.grid("
                        "lr=[0.5]), epochs=1, name='big')(train)\n")):
        path = tmp_path / f"{name}.py"
        path.write_text(text)
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        try:
            spec.loader.exec_module(module)
        finally:
            del sys.modules[name]
        if name == "hpspec_reuse_once":
            assert build(module.small).name == "small"
            continue
        with pytest.raises(hp.SpecError, match=r"::train: hp.experiment\(\.\.\.\)\(fn\): declares "
                           r"this function a second time \(the first declaration is named "
                           r"'small'\).*fix: give each experiment its own function \(def "
                           r"big\(case\): return train\(case\)\)"):
            build(module.big)
