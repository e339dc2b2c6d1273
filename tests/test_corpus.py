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
}


def test_runtime_corpus_each_cell_fails_alone_with_a_fix(pytester):
    pytester.makepyfile(exp_runtime=RUNTIME)
    result = pytester.runpytest("--hpspec-cache=off", "-p", "no:randomly")
    out = result.stdout.str()
    result.assert_outcomes(passed=1, failed=11)
    for name, text in EXPECTED.items():
        line = next((ln for ln in out.splitlines() if ln.startswith(f"exp_runtime.py::{name}[")
                     and ": " in ln), None)
        assert line is not None, (name, out)
        assert text in line, (name, line)
    # the user's own exceptions: their line, their message, nothing of hpspec
    assert 'raise FileNotFoundError("my_dataset.csv")' in out
    assert 'return self.fc(x.to("meta"))' in out
    assert "hpspec/runner.py" not in out and "hpspec/plugin.py" not in out
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
