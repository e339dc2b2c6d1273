from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

RECIPE = """
import torch
import hpspec as hp

@hp.experiment(
    grid=hp.grid(lr=[0.3, 0.001], activation=["relu", "tanh"]),
    fixed=dict(hidden=16),
    epochs=3,
    seeds=2,
    data=hp.datasets.digits(n_train=300),
    claims=[
        hp.where(lr=0.3).expect(hp.metric("val_acc").final() >= 0.5),
        hp.where(lr=0.001).expect(hp.metric("val_loss").below(0.3).within(epochs=2)),
    ],
)
def digits_mlp(case):
    model = hp.models.mlp(64, [case.hidden], 10, activation=case.activation)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""

LOOP = """
import hpspec as hp

@hp.experiment(grid=hp.grid(lr=[0.1, 0.5]), epochs=3,
               claims=[hp.expect(hp.metric("loss").final() < 0.5)])
def loop(case):
    loss = 1.0
    for _ in range(10):
        loss *= (1 - case.lr)
        yield {"loss": loss}
"""


def test_one_item_per_cell_with_readable_ids(pytester):
    pytester.makepyfile(exp_digits=RECIPE)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "exp_digits.py::digits_mlp[[]lr=0.3-activation=relu[]]",
        "exp_digits.py::digits_mlp[[]lr=0.3-activation=tanh[]]",
        "exp_digits.py::digits_mlp[[]lr=0.001-activation=relu[]]",
        "exp_digits.py::digits_mlp[[]lr=0.001-activation=tanh[]]",
        "4 tests collected*",
    ])


def test_collect_only_trains_nothing(pytester):
    pytester.makepyfile(exp_sentinel="""
        import hpspec as hp
        @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=1)
        def never(case):
            raise AssertionError("trained during --collect-only")
            yield {}
    """)
    result = pytester.runpytest("--collect-only")
    result.assert_outcomes()
    assert "trained during" not in result.stdout.str()
    assert result.ret == 0


def test_passes_fails_and_shows_the_curve(pytester):
    pytester.makepyfile(exp_digits=RECIPE)
    result = pytester.runpytest("-p", "no:cacheprovider")
    result.assert_outcomes(passed=2, failed=2)
    result.stdout.fnmatch_lines([
        "*claim: where lr=0.001: val_loss below 0.3 (<) within 2 epochs (every seed)*",
        "*FAIL seed 0: never below 0.3*",
        "*val_loss by epoch: * * (needed < 0.3 by epoch 2)*",
        "*held for 0 of 2 seeds, needed 2*",
    ])


def test_summary_table_per_experiment(pytester):
    pytester.makepyfile(exp_digits=RECIPE)
    result = pytester.runpytest()
    result.stdout.fnmatch_lines([
        "*hpspec: exp_digits.py::digits_mlp*",
        "digits_mlp on cpu, 2 seeds per cell (mean ± sd)",
        "lr*activation*verdict*train_loss (final)*val_loss (final)*val_acc (final)*diverged*"
        "val_loss<0.3 at*time/epoch*samples/s*peak mem*params*FLOPs/sample",
        "0.3*relu*passed*",
        "0.001*tanh*FAILED*never*",
        "*peak mem: peak bytes of live tensors while training*",
    ])
    quiet = pytester.runpytest("--hpspec-table=none")
    assert "hpspec: exp_digits.py" not in quiet.stdout.str()
    short = pytester.runpytest("--hpspec-table=short")
    short.stdout.fnmatch_lines([
        "lr*activation*verdict*val_loss (final)*val_acc (final)*diverged*samples/s*peak mem",
    ])
    assert "train_loss (final)" not in short.stdout.str()
    assert "FLOPs/sample" not in short.stdout.str()


def test_columns_option_picks_columns_and_names_missing_ones(pytester):
    pytester.makepyfile(exp_digits=RECIPE)
    result = pytester.runpytest("--hpspec-columns=samples_per_s,val_acc,steps_per_s,nope")
    result.stdout.fnmatch_lines([
        "lr*activation*samples/s*val_acc (final)*steps/s",
        "*--hpspec-columns: no data for nope; this experiment has: verdict, *",
    ])
    bad = pytester.runpytest("--hpspec-columns=,")
    assert bad.ret == pytest.ExitCode.USAGE_ERROR
    bad.stderr.fnmatch_lines(["*--hpspec-columns*not a comma-separated list*e.g.*"])


def test_dash_k_selects_cells(pytester):
    pytester.makepyfile(exp_digits=RECIPE)
    result = pytester.runpytest("-k", "0.3 and tanh", "-q")
    result.assert_outcomes(passed=1, deselected=3)


def test_last_failed_reruns_only_failing_cells(pytester):
    pytester.makepyfile(exp_loop=LOOP)
    pytester.runpytest().assert_outcomes(passed=1, failed=1)
    again = pytester.runpytest("--lf", "-v")
    again.assert_outcomes(failed=1)
    again.stdout.fnmatch_lines(["*rerun previous 1 failure*", "*loop[[]lr=0.1[]] FAILED*"])
    assert "lr=0.5" not in again.stdout.str().split("short test summary")[0].split("FAILURES")[0]


def test_junit_xml_carries_key_numbers(pytester):
    pytester.makepyfile(exp_loop=LOOP)
    pytester.runpytest("--junitxml=out.xml")
    xml = (pytester.path / "out.xml").read_text()
    assert 'name="loop[lr=0.5]"' in xml
    assert '<property name="hpspec.loss" value="0.125"' in xml


def test_junit_and_json_carry_recipe_measurements(pytester):
    import json
    import re

    pytester.makepyfile(exp_digits=RECIPE)
    pytester.runpytest("--junitxml=out.xml", "--hpspec-json=run.json", "-k", "0.3 and relu")
    xml = (pytester.path / "out.xml").read_text()
    props = dict(re.findall(r'<property name="hpspec\.(\w+)" value="([^"]+)"', xml))
    # forward, weight gradients, and the input gradient of the second layer only
    assert float(props["flops_per_sample"]) == 2 * 2 * (64 * 16 + 16 * 10) + 2 * 16 * 10
    assert float(props["samples_per_s"]) > 0
    assert float(props["peak_memory"]) > 4 * (64 * 16 + 16 + 16 * 10 + 10)
    assert 0 <= float(props["val_acc"]) <= 1
    doc = json.loads((pytester.path / "run.json").read_text())
    (cell,) = doc["experiments"][0]["cells"]
    seed = cell["result"]["seeds"][0]
    assert set(seed) >= {"seed", "curves", "epoch_seconds", "initial", "diverged",
                         "measurements", "epochs_planned", "steps_per_epoch"}
    assert seed["measurements"]["params"] == 64 * 16 + 16 + 16 * 10 + 10


def test_broken_spec_is_an_error_and_the_rest_still_runs(pytester):
    pytester.makepyfile(exp_mixed=LOOP + """

@hp.experiment(grid=hp.grid(lr=0.1), epochs=2)
def broken(case):
    yield {"loss": 1.0}

@hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2,
               claims=[hp.where(momentum=0.9).expect(hp.diverges())])
def unknown_name(case):
    yield {"loss": 1.0}
""")
    result = pytester.runpytest()
    result.assert_outcomes(passed=1, failed=1, errors=2)
    out = result.stdout.str()
    assert ("hpspec spec error: exp_mixed.py::broken: grid['lr'] = 0.1 must be a list of "
            "values; fix: write lr=[0.1]") in out
    assert ("exp_mixed.py::unknown_name: claims[0]: where(momentum=...) = 'momentum' names "
            "an unknown hyperparameter; fix: use one of: lr") in out
    assert "hpspec/spec.py" not in out and "Traceback" not in out


def test_user_exception_shows_user_code_not_hpspec(pytester):
    pytester.makepyfile(exp_crash="""
        import hpspec as hp

        def helper():
            raise ValueError("bug in my data code")

        @hp.experiment(grid=hp.grid(lr=[0.1]), epochs=2)
        def crash(case):
            helper()
            yield {"loss": 1.0}
    """)
    result = pytester.runpytest()
    result.assert_outcomes(failed=1)
    out = result.stdout.str()
    assert "bug in my data code" in out
    assert "helper()" in out
    assert "hpspec/engine/runner.py" not in out


def test_experiment_files_pattern_is_configurable(pytester):
    pytester.makeini("[pytest]\nhpspec_files = hp_*.py\n")
    pytester.makepyfile(hp_custom=LOOP, exp_ignored=LOOP)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines(["hp_custom.py::loop[[]lr=0.1[]]", "*2 tests collected*"])


def test_bad_device_option_is_a_usage_error(pytester):
    pytester.makepyfile(exp_loop=LOOP)
    result = pytester.runpytest("--hpspec-device=tpu")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hpspec-device: 'tpu' is not a device; use auto, cpu*"])


def test_bad_ini_value_is_a_usage_error(pytester):
    pytester.makeini("[pytest]\nhpspec_table = wide\n")
    pytester.makepyfile(exp_loop=LOOP)
    result = pytester.runpytest()
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(
        ["*--hpspec-table: 'wide' is not one of full, short, none*hpspec_table*"])


def test_import_error_in_experiment_file_is_reported_like_pytest(pytester):
    pytester.makepyfile(exp_bad="import not_a_module_anywhere\n")
    result = pytester.runpytest()
    result.stdout.fnmatch_lines(["*ModuleNotFoundError: No module named 'not_a_module_anywhere'*"])


def test_plugin_import_does_not_import_torch():
    code = textwrap.dedent("""
        import sys
        import hpspec, hpspec.plugin
        print("torch" in sys.modules)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_public_api_names_resolve():
    import hpspec

    for name in hpspec.__all__:
        assert getattr(hpspec, name) is not None, name


def test_json_report_holds_every_seed_curve_and_verdict(pytester):
    import json

    from hpspec.results import CellResult

    pytester.makepyfile(exp_loop=LOOP)
    pytester.runpytest("--hpspec-json=run.json")
    doc = json.loads((pytester.path / "run.json").read_text())
    assert doc["schema"] == "hpspec-run" and doc["version"] == 1
    assert doc["environment"]["cpu_count"] >= 1 and doc["environment"]["device"] == "cpu"
    (exp,) = doc["experiments"]
    assert exp["name"] == "loop" and exp["axes"] == ["lr"]
    by_id = {c["cell_id"]: c for c in exp["cells"]}
    assert by_id["lr=0.5"]["outcome"] == "passed"
    assert by_id["lr=0.1"]["verdicts"][0]["outcome"] == "fail"
    result = CellResult.from_dict(by_id["lr=0.5"]["result"])
    assert result.seeds[0].curves["loss"] == [0.5, 0.25, 0.125]


def test_live_progress_on_a_terminal_only(pytester, monkeypatch):
    import hpspec.plugin

    monkeypatch.setattr(hpspec.plugin, "PROGRESS_INTERVAL", 0.0)
    pytester.makepyfile(exp_digits=RECIPE)
    plain = pytester.runpytest("-k", "0.3 and relu")
    assert "epoch 3/3" not in plain.stdout.str()  # not a terminal: quiet
    pytester.makeconftest("""
        import pytest
        from _pytest.compat import CallableBool

        @pytest.hookimpl(trylast=True)
        def pytest_configure(config):
            config.pluginmanager.get_plugin("terminalreporter").isatty = CallableBool(True)
    """)
    tty = pytester.runpytest("-k", "0.3 and relu", "--hpspec-cache=refresh")
    out = tty.stdout.str()
    assert "digits_mlp[lr=0.3-activation=relu]" in out and " epoch 3/3 loss " in out
    tty.assert_outcomes(passed=1)


def test_the_readme_within_example_fails_with_each_seeds_curve(pytester):
    example = Path(__file__).resolve().parents[1] / "examples" / "exp_within.py"
    shutil.copy(example, pytester.path / "exp_within.py")
    result = pytester.runpytest("--hpspec-json=run.json")
    result.assert_outcomes(passed=1, failed=1)
    # the README shows this block verbatim (numbers to 3 decimals)
    result.stdout.fnmatch_lines([
        "*claim: where lr=0.03: val_loss below 0.3 (<) within 3 epochs (every seed)",
        "  FAIL seed 0: never below 0.3",
        "         val_loss by epoch: 2.161 1.954 1.714 (needed < 0.3 by epoch 3)",
        "  FAIL seed 1: never below 0.3",
        "         val_loss by epoch: 2.131 1.924 1.704 (needed < 0.3 by epoch 3)",
        "  FAIL seed 2: never below 0.3",
        "         val_loss by epoch: 2.139 1.939 1.714 (needed < 0.3 by epoch 3)",
        "held for 0 of 3 seeds, needed 3",
    ])
    doc = json.loads((pytester.path / "run.json").read_text())
    cells = {c["cell_id"]: c for c in doc["experiments"][0]["cells"]}
    # early stop: lr=0.03's seeds stopped once epoch 3 decided the claim; lr=0.3 is asked
    # nothing, so it trained all 5
    assert {len(s["curves"]["val_loss"]) for s in cells["lr=0.03"]["result"]["seeds"]} == {3}
    assert {len(s["curves"]["val_loss"]) for s in cells["lr=0.3"]["result"]["seeds"]} == {5}
