"""Broken experiments at run time and broken command lines, all in one session: each gives
a message naming file::function[cell] (or the option), what is wrong and a fix, shows none of
hpspec's own frames, and the rest of the session runs."""

from __future__ import annotations

import pytest

RUNTIME = """
import torch
import hpspec as hp

D = hp.datasets.digits(n_train=100)

@hp.experiment(epochs=1, data=D)
def vector_loss(case):
    model = torch.nn.Linear(64, 10)
    loss = torch.nn.CrossEntropyLoss(reduction="none")
    return hp.Recipe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss=loss)

@hp.experiment(epochs=1, data=D)
def wrong_width(case):
    model = torch.nn.Linear(64, 7)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def wrong_input_width(case):
    model = hp.models.mlp(784, [16], 10)  # MNIST's width on the 64-feature digits
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def returns_model_only(case):
    return torch.nn.Linear(64, 10)

@hp.experiment(epochs=1, data=D)
def optimizer_class_not_instance(case):
    return torch.nn.Linear(64, 10), torch.optim.SGD

@hp.experiment(epochs=1, data=D)
def unknown_recipe_key(case):
    m = torch.nn.Linear(64, 10)
    return {"model": m, "optimizer": torch.optim.SGD(m.parameters(), lr=0.1), "lr": 1}

class OtherDevice(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(64, 10)
    def forward(self, x):
        return self.fc(x.to("meta"))

@hp.experiment(epochs=1, data=D)
def model_on_another_device(case):
    m = OtherDevice()
    return m, torch.optim.SGD(m.parameters(), lr=0.1)

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2)
def yields_text(case):
    yield {"loss": "low"}

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2)
def yields_a_list(case):
    yield [0.5]

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2, metrics=["loss", "acc"])
def forgets_a_metric(case):
    yield {"loss": 0.5}

@hp.experiment(epochs=1, data=D)
def data_code_raises(case):
    raise FileNotFoundError("my_dataset.csv")

@hp.experiment(epochs=1, data=D)
def optimizer_of_another_model(case):
    model, other = torch.nn.Linear(64, 10), torch.nn.Linear(64, 10)
    return model, torch.optim.SGD(other.parameters(), lr=0.1)

class NoParams(torch.nn.Module):
    def forward(self, x):
        return x[:, :10]

@hp.experiment(epochs=1, data=D)
def model_without_parameters(case):
    m = NoParams()
    return m, torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)

@hp.experiment(epochs=1, data=D)
def detached_loss(case):
    m = torch.nn.Linear(64, 10)
    ce = torch.nn.CrossEntropyLoss()
    return hp.Recipe(m, torch.optim.SGD(m.parameters(), lr=0.1),
                     loss=lambda out, y: ce(out.detach(), y))

@hp.experiment(epochs=1, data=D)
def good(case):
    m = torch.nn.Linear(64, 10)
    return m, torch.optim.SGD(m.parameters(), lr=0.1)
"""

EXPECTED = {
    "vector_loss": "the loss must be a scalar tensor, got (64,); fix: reduce it",
    "wrong_width": "should be (batch, 10); fix: make the last layer's out_features 10",
    "wrong_input_width": "the model's first layer (Linear) takes 784 inputs but the data "
                         "has 64 features per sample; fix: make its in_features 64",
    "returns_model_only": "returned Linear, not a recipe; fix: return (model, optimizer)",
    "optimizer_class_not_instance": "not a torch.optim.Optimizer; fix: return (model, "
                                    "torch.optim.SGD(model.parameters(), lr=case.lr))",
    "unknown_recipe_key": "the returned dict has unknown keys ['lr']; allowed: model, optimizer",
    "yields_text": "epoch 1 yielded 'loss': 'low', which is not a number; fix: yield plain "
                   "numbers",
    "yields_a_list": "epoch 1 yielded a list; fix: yield a dict of metrics",
    "forgets_a_metric": "declared metrics ['acc'] were never yielded",
    "optimizer_of_another_model": "the optimizer holds 2 parameter tensors and none of them "
                                  "is the model's (Linear): it was built over another model",
    "model_without_parameters": "the model (NoParams) has no parameters, so training cannot "
                                "change it",
    "detached_loss": "the loss has no gradient path to the model's parameters (it was "
                     "detached",
}


def test_runtime_corpus_each_cell_fails_alone_with_a_fix(pytester):
    pytester.makepyfile(exp_runtime=RUNTIME)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=14)
    for name, text in EXPECTED.items():
        line = next((ln for ln in out.splitlines() if ln.startswith(f"exp_runtime.py::{name}[")
                     and ": " in ln), None)
        assert line is not None, (name, out)
        assert text in line, (name, line)
    # the user's own exceptions: their line, their message, nothing of hpspec
    assert 'raise FileNotFoundError("my_dataset.csv")' in out
    assert 'return self.fc(x.to("meta"))' in out
    assert "hpspec/engine/runner.py" not in out and "hpspec/plugin.py" not in out
    assert "_pytest" not in out.split("short test summary")[0].split("FAILURES")[-1]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hpspec-device=tpu"], "--hpspec-device: 'tpu' is not a device; use auto, cpu"),
        (["--hpspec-device=cuda"], "--hpspec-device=cuda: CUDA is not available"),
        (["--hpspec-table=wide"], "--hpspec-table: 'wide' is not one of full, short, none"),
        (["--hpspec-confidence=1.5"], "--hpspec-confidence: '1.5' is not a probability"),
        (["--hpspec-inconclusive=maybe"], "--hpspec-inconclusive: 'maybe' is not one of"),
        (["--hpspec-holm=yes"], "--hpspec-holm: 'yes' is not one of off, experiment, run"),
        (["--hpspec-stack=maybe"], "--hpspec-stack: 'maybe' is not one of on, off"),
        (["--hpspec-cache=never"], "--hpspec-cache: 'never' is not one of use, refresh, off"),
        (["--hpspec-timeout=-5"], "--hpspec-timeout: '-5' is not a positive number of seconds"),
        (["--hpspec-columns=,"], "--hpspec-columns: ',' is not a comma-separated list"),
        (["--hpspec-compare-fail=loss"], "--hpspec-compare-fail: 'loss' is not METRIC:+AMOUNT"),
        (["--hpspec-cache=off", "--hpspec-save=main"], "--hpspec-cache=off turns the store off"),
    ],
)
def test_bad_command_lines_are_usage_errors_naming_the_option(pytester, args, message):
    pytester.makepyfile(exp_ok=RUNTIME.split("@hp.experiment(epochs=1, data=D)\ndef vector")[0]
                        + "\n@hp.experiment(epochs=1, data=D)\ndef ok(case):\n"
                        "    m = torch.nn.Linear(64, 10)\n"
                        "    return m, torch.optim.SGD(m.parameters(), lr=0.1)\n")
    result = pytester.runpytest(*args)
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    assert message in result.stderr.str(), result.stderr.str()
    assert "Traceback" not in result.stderr.str()


OK_EXP = (RUNTIME.split("@hp.experiment(epochs=1, data=D)\ndef vector")[0]
          + "\n@hp.experiment(epochs=1, data=D)\ndef ok(case):\n"
          "    m = torch.nn.Linear(64, 10)\n"
          "    return m, torch.optim.SGD(m.parameters(), lr=0.1)\n")


@pytest.mark.parametrize(
    ("store", "message"),
    [
        (".", "--hpspec-store=.: "),
        (".hpspec", "--hpspec-store=.hpspec: "),
        ("notes.txt", "that is not a SQLite database"),
        ("notes.txt/results.sqlite", "is a file, so"),
    ],
)
def test_a_store_path_that_is_a_directory_or_not_sqlite_is_a_usage_error(pytester, store,
                                                                         message):
    pytester.makepyfile(exp_ok=OK_EXP)
    (pytester.path / ".hpspec").mkdir()
    (pytester.path / ".hpspec" / "results.sqlite").write_bytes(b"")
    (pytester.path / "notes.txt").write_text("not a database\n")
    before = sorted(str(p.relative_to(pytester.path)) for p in pytester.path.rglob("*"))
    result = pytester.runpytest(f"--hpspec-store={store}")
    assert result.ret == pytest.ExitCode.USAGE_ERROR, result.stdout.str()
    err = result.stderr.str()
    assert message in err and "--hpspec-store" in err and "fix:" in err, err
    assert "Traceback" not in err
    after = sorted(str(p.relative_to(pytester.path)) for p in pytester.path.rglob("*")
                   if "__pycache__" not in str(p))
    assert after == [p for p in before if "__pycache__" not in p]  # nothing moved or made
    assert (pytester.path / "notes.txt").read_text() == "not a database\n"


DUPLICATES = """
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, name="same",
               claims=[hp.expect(hp.metric("loss").final() < 1)])
def first(case):
    yield {"loss": 0.5}

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, name="same",
               claims=[hp.expect(hp.metric("loss").final() < 0.1)])
def second(case):
    yield {"loss": 0.5}

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1)
def third(case):
    yield {"loss": 0.5}

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1, name="third")
def fourth(case):
    yield {"loss": 0.5}
"""


def test_two_experiments_with_one_name_are_a_spec_error_naming_both(pytester):
    pytester.makepyfile(exp_dup=DUPLICATES)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(passed=2, errors=2)
    assert ("exp_dup.py::second: name = 'same' is also the name of exp_dup.py::first" in out), out
    assert "exp_dup.py::fourth: name = 'third' is also the name of exp_dup.py::third" in out, out

MISSPELLED = """
import torch
import hpspec as hp

D = hp.datasets.digits(n_train=100)
SPACE = hp.space(lr=hp.loguniform(1e-3, 1.0))

def recipe(case):
    model = torch.nn.Linear(64, 10)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def good(case):
    return recipe(case)

@hp.experiment(grids=hp.grid(lr=[0.1]), epochs=1, data=D)
def grids(case):
    return recipe(case)

@hp.experiment(search=hp.optuna(SPACE, n_trials=4), epochs=1, data=D)
def optuna_n_trials(case):
    return recipe(case)

@hp.experiment(search=hp.random(SPACE, trials=4, halving=hp.halving(min_epoch=1)), epochs=2,
               data=D)
def halving_min_epoch(case):
    return recipe(case)
"""


def test_a_misspelled_keyword_is_that_experiments_error_not_the_files(pytester):
    # README "Mistakes": a mistake is reported on that experiment alone; the file's other
    # experiments still run (a TypeError at import would have broken the whole file).
    pytester.makepyfile(exp_typo=MISSPELLED)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(passed=1, errors=3)
    for where, text in [("grids", "grids = hp.grid(lr=[0.1]) is not an argument"),
                        ("optuna_n_trials", "n_trials = 4"),
                        ("halving_min_epoch", "min_epoch = 1")]:
        assert f"exp_typo.py::{where}: {text}" in out, out
    for fix in ("did you mean grid=?", "did you mean trials=?", "did you mean min_epochs=?"):
        assert fix in out, out


KINDS = """
import torch
import hpspec as hp

D = hp.datasets.digits(n_train=100)

class Tokens(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = torch.nn.Embedding(50, 8)
        self.fc = torch.nn.Linear(8, 10)
    def forward(self, x):
        return self.fc(self.embed(x).mean(1))

@hp.experiment(epochs=1, data=D)
def float64_model(case):
    model = torch.nn.Linear(64, 10).double()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def embedding_model(case):
    model = Tokens()
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def meta_model(case):
    with torch.device("meta"):
        model = torch.nn.Linear(64, 10)
    return model, torch.optim.SGD(model.parameters(), lr=0.1)

@hp.experiment(epochs=1, data=D)
def scheduler_number(case):
    model = torch.nn.Linear(64, 10)
    return hp.Recipe(model, torch.optim.SGD(model.parameters(), lr=0.1), scheduler=0.5)

@hp.experiment(epochs=1, data=D)
def scheduler_class(case):
    model = torch.nn.Linear(64, 10)
    return hp.Recipe(model, torch.optim.SGD(model.parameters(), lr=0.1),
                     scheduler=torch.optim.lr_scheduler.StepLR)
"""

KIND_MESSAGES = {
    "float64_model": "the model's parameters are float64 but the data's features are float32; "
                     "fix: build the model in float32",
    "embedding_model": "nn.Embedding needs integer token ids but the data's features are "
                       "float32",
    "meta_model": "the model is on the meta device",
    "scheduler_number": "the recipe's scheduler is a float, not a scheduler object",
    "scheduler_class": "the recipe's scheduler is the class StepLR",
}


def test_unsupported_model_kinds_are_one_message_with_a_fix(pytester):
    pytester.makepyfile(exp_kinds=KINDS)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(failed=len(KIND_MESSAGES))
    for name, text in KIND_MESSAGES.items():
        line = next((ln for ln in out.splitlines() if ln.startswith(f"exp_kinds.py::{name}[")
                     and ": " in ln), None)
        assert line is not None and text in line, (name, line)
        assert "fix:" in line, line
    failures = out.split("FAILURES")[-1].split("short test summary")[0]
    assert "torch/" not in failures and "_pytest" not in failures, failures
