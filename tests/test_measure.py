"""Measurements: live memory, FLOPs, model size, time-to-target, measurement claims."""

from __future__ import annotations

import gc

import attrs
import pytest
import torch

import hpspec as hp
from hpspec.claims import FAIL, PASS, judge_cell_claim, parse_size
from hpspec.engine.probes import LiveMemory, count_flops, model_size, peak_flops
from hpspec.engine.runner import run_cell
from hpspec.errors import SpecError
from hpspec.spec import build


def test_live_memory_reports_a_known_allocation_within_5_percent():
    with LiveMemory() as mem:
        a = torch.empty(1000, 1000)  # 4,000,000 bytes
        b = a + 1  # another 4,000,000
        del a
        gc.collect()
        live_after_free = mem.live
        c = torch.zeros(250, 1000)  # 1,000,000 on top of b
        del c
    assert mem.peak == pytest.approx(8_000_000, rel=0.05)
    assert live_after_free == pytest.approx(4_000_000, rel=0.05)
    assert b.numel() == 1_000_000


def test_live_memory_counts_existing_tensors_once_and_views_not_at_all():
    x = torch.empty(500, 1000)
    with LiveMemory() as mem:
        mem.add([x, x, x[:10]])
        v = x.view(-1)  # same storage
        assert v.numel() == x.numel()
    assert mem.peak == pytest.approx(2_000_000, rel=0.05)


def test_flop_count_of_a_known_linear_layer():
    layer = torch.nn.Linear(100, 50)
    x = torch.randn(8, 100)
    with count_flops() as fc:
        layer(x).sum().backward()
    # forward 2*8*100*50; backward: weight gradient only (x needs no gradient)
    assert fc.get_total_flops() == 2 * 8 * 100 * 50 * 2


def test_model_size_counts_parameters_and_bytes():
    m = torch.nn.Sequential(torch.nn.Linear(64, 10), torch.nn.BatchNorm1d(10))
    size = model_size(m)
    assert size["params"] == 64 * 10 + 10 + 10 + 10
    # parameters plus buffers (running mean and var in float32, the counter in int64)
    assert size["param_bytes"] == 4 * (650 + 20) + 4 * 20 + 8


def test_peak_flops_knows_cards_by_name():
    assert peak_flops("NVIDIA H100 80GB HBM3") == 67e12
    assert peak_flops("NVIDIA H100 PCIe") == 51e12
    assert peak_flops("NVIDIA H100 80GB HBM3", tensor_cores=True) == 494e12
    assert peak_flops("Some Future Card") is None


def _linear(case):
    model = torch.nn.Linear(64, 10)
    return model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)


def test_runner_measures_flops_memory_and_size_per_cell():
    exp = build(hp.experiment(epochs=2, seeds=2, batch_size=32,
                              data=hp.datasets.digits(n_train=320))(_linear))
    res = run_cell(exp, exp.cells[0], "cpu")
    first, second = res.seeds
    m = first.measurements
    assert m["params"] == 650
    assert m["flops_per_sample"] == 2 * 64 * 10 * 2
    # parameters, their gradients and momentum (3 x 2600 B), data (train and validation)
    data = exp.data.load()
    floor = 3 * 650 * 4 + sum(t.numel() * t.element_size()
                              for t in (data.x_train, data.y_train, data.x_val, data.y_val))
    assert floor <= m["peak_memory"] < floor + 64 * 1024
    assert m["samples_per_s"] > 0 and m["steps_per_s"] > 0
    # probed once per cell: the second seed carries the same numbers
    for key in ("params", "flops_per_sample", "peak_memory"):
        assert second.measurements[key] == m[key]
    assert first.steps_per_epoch == 10


def test_time_to_target_names_epoch_step_and_seconds(run):
    r = attrs.evolve(run(0, val_loss=[2.3, 0.5, 0.2, 0.1]), steps_per_epoch=23,
                     epoch_seconds=[1.0, 1.0, 1.0, 1.0])
    reach = hp.metric("val_loss").below(0.3)
    assert reach.reached(r) == (3, 69, 3.0)
    ok = judge_cell_claim(hp.expect(reach.within(seconds=3.5)), [r])
    assert ok.outcome == PASS
    assert "reached at epoch 3, step 69, 3 s" in ok.message
    slow = judge_cell_claim(hp.expect(reach.within(epochs=4, seconds=2.5)), [r])
    assert slow.outcome == FAIL
    assert "needed < 0.3 by epoch 4 within 2.5 s" in slow.message


def test_measurement_claims_with_sizes(run):
    r = run(0, val_loss=[1.0], measurements={"peak_memory": 3 * 2**20, "samples_per_s": 5e4})
    assert judge_cell_claim(hp.expect(hp.peak_memory() < "4 MiB"), [r]).outcome == PASS
    assert judge_cell_claim(hp.expect(hp.peak_memory() < "2 MiB"), [r]).outcome == FAIL
    assert judge_cell_claim(hp.expect(hp.throughput() > 1e4), [r]).outcome == PASS
    assert judge_cell_claim(hp.expect(hp.measure("flops_per_sample") > 1), [r]).outcome == FAIL
    assert parse_size("2 GiB") == 2 * 2**30
    assert parse_size("1.5GB") == 1.5e9
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError, match="not a size"):
        parse_size("2 gigs")


@pytest.mark.parametrize(
    ("claim", "arg", "fix"),
    [
        (hp.expect(hp.peak_memory() < "lots"), "claims[0]", "2 GiB"),
        (hp.expect(hp.measure("joules") < 5), "claims[0]: measure(...)", "samples_per_s"),
        (hp.expect(hp.metric("val_loss").below(0.3).within(seconds=-1)),
         "claims[0]: within(seconds=...)", "seconds=30"),
    ],
)
def test_bad_measurement_claims_are_spec_errors(claim, arg, fix):
    spec = hp.experiment(epochs=1, data=hp.datasets.digits(), claims=[claim])(_linear)
    with pytest.raises(SpecError) as e:
        build(spec)
    assert e.value.argument == arg
    assert fix in str(e.value)


def test_loop_mode_cannot_claim_recipe_measurements():
    def loop(case):
        yield {"loss": 1.0}

    spec = hp.experiment(epochs=1, claims=[hp.expect(hp.peak_memory() < "1 GiB")])(loop)
    with pytest.raises(SpecError, match="recipe mode only"):
        build(spec)


def test_inference_profile_option_is_quiet_and_measured(pytester):
    pytest.importorskip("pytorch_benchmark")
    import json

    pytester.makepyfile(exp_inf="""
        import torch
        import hpspec as hp

        @hp.experiment(grid=hp.grid(lr=[0.1, 0.2]), epochs=1, seeds=2,
                       data=hp.datasets.digits(n_train=100))
        def inf(case):
            m = hp.models.mlp(64, [16], 10)
            return m, torch.optim.SGD(m.parameters(), lr=case.lr)
    """)
    result = pytester.runpytest("--hpspec-inference", "--hpspec-cache=off",
                                "--hpspec-json=run.json",
                                "--hpspec-columns=inference_latency_b1,inference_macs")
    result.assert_outcomes(passed=2)
    out = result.stdout.str() + result.stderr.str()
    assert "Measuring inference" not in out and "Warming up" not in out  # progress bars
    assert "Jetson" not in out  # its log noise
    result.stdout.fnmatch_lines(["lr*infer b=1*MACs", "0.1*us*1.2k*"])
    doc = json.loads((pytester.path / "run.json").read_text())
    for cell in doc["experiments"][0]["cells"]:
        for seed in cell["result"]["seeds"]:  # probed once per cell, shared by its seeds
            m = seed["measurements"]
            # ptflops: the weights' multiply-adds, plus one per bias and one per ReLU output
            assert m["inference_macs"] == 64 * 16 + 16 * 10 + (16 + 10) + 16
            assert 0 < m["inference_latency_b1"] < 1


def test_inference_without_pytorch_benchmark_says_how_to_install(monkeypatch):
    import builtins

    from hpspec.engine import probes

    real_import = builtins.__import__

    def no_benchmark(name, *args, **kwargs):
        if name.startswith("pytorch_benchmark"):
            raise ModuleNotFoundError("No module named 'pytorch_benchmark'",
                                      name="pytorch_benchmark")
        return real_import(name, *args, **kwargs)

    probes.benchmark_module.cache_clear()
    monkeypatch.setattr(builtins, "__import__", no_benchmark)
    try:
        with pytest.raises(probes.InferenceUnavailable, match=r"pip install 'hpspec\[inference\]'"):
            probes.benchmark_module()
    finally:
        probes.benchmark_module.cache_clear()


def test_mfu_from_flops_throughput_and_the_card_peak(monkeypatch):
    # The CUDA-only path, on the CPU: a made-up card peak of 1 GFLOP/s.
    import hpspec.engine.runner as runner
    from hpspec.engine import probes

    monkeypatch.setattr(runner, "device_peak_flops", lambda device: 1e9)
    probes.PROBE_CACHE.clear()
    exp = build(hp.experiment(epochs=2, data=hp.datasets.digits(n_train=200))(_linear))
    m = run_cell(exp, exp.cells[0], "cpu").seeds[0].measurements
    assert m["mfu"] == pytest.approx(m["flops_per_sample"] * m["samples_per_s"] / 1e9)


class _Distill(torch.nn.Module):
    """A loss that runs a teacher model: its FLOPs are part of every step."""

    def __init__(self):
        super().__init__()
        self.teacher = torch.nn.Linear(64, 10)
        self.ce = torch.nn.CrossEntropyLoss()

    def forward(self, out, y):
        return self.ce(out, y)

    def __call__(self, out, y):  # the teacher sees the same batch size as the student's output
        return super().__call__(out, y) + 0.0 * self.teacher(
            torch.zeros(out.shape[0], 64)).sum()


def test_a_remembered_one_by_one_probe_is_not_served_to_another_loss(monkeypatch):
    """The one-by-one runner remembers a model's probed figures per process: a cell with the
    same model and optimizer but a loss that runs a teacher has its own FLOPs, not the
    plain loss's remembered ones."""
    from hpspec.engine import probes

    monkeypatch.setattr(probes, "PROBE_CACHE", {})

    def plain(case):
        model = torch.nn.Linear(64, 10)
        return model, torch.optim.SGD(model.parameters(), lr=0.1)

    def distilled(case):
        model = torch.nn.Linear(64, 10)
        return hp.Recipe(model, torch.optim.SGD(model.parameters(), lr=0.1), loss=_Distill())

    flops = []
    for fn in (plain, distilled, plain):
        exp = build(hp.experiment(epochs=1, batch_size=32, stack=False,
                                  data=hp.datasets.digits(n_train=200))(fn))
        flops.append(run_cell(exp, exp.cells[0], "cpu").seeds[0].measurements[
            "flops_per_sample"])
    assert flops[1] > flops[0] == flops[2]
