"""Training: device choice, seeding, the recipe-mode loop and the loop-mode driver.

With :mod:`hpspec.engine.stacked` (and the primitives both share, in
:mod:`hpspec.engine.common`), the part of hpspec that needs torch. It turns an
:class:`~hpspec.spec.Experiment` and a :class:`~hpspec.spec.Cell` into a
:class:`~hpspec.results.CellResult` (plain data).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import gc
import math
import os
import random
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs
import torch

from hpspec.datasets import CLASSIFICATION, Data, DataSpec
from hpspec.engine.common import (
    DIVERGENCE_FACTOR,
    WARMUP_STEPS,
    NoGradPath,
    Progress,
    StopRule,
    TimedSteps,
    default_loss,
    divergence,
    divergence_limit,
    probe_memory,
    sync,
    train_step,
)
from hpspec.engine.compiler import compiler_import_deferred
from hpspec.engine.probes import (
    LiveMemory,
    count_flops,
    device_peak_flops,
    inference_profile,
    model_size,
    probe_key,
    recall_probe,
    remember_probe,
)
from hpspec.errors import BudgetExceeded, CellError
from hpspec.measures import PROBED as MEASURE_PROBED
from hpspec.measures import is_probed
from hpspec.plan import StackGroup
from hpspec.results import CellResult, Divergence, SeedResult
from hpspec.spec import Case, Cell, Experiment, Recipe
from hpspec.threads import Threads, choose_threads
from hpspec.watchdog import FAR_PAST, BudgetAlarm, watchdog

__all__ = ["select_device", "run_cell", "run_seed", "torch_state", "DIVERGENCE_FACTOR"]

_EVAL_CHUNK = 8192


def select_device(preference: str = "auto") -> str:
    """``auto`` picks CUDA, then MPS, then CPU; anything else is checked and returned."""
    if preference == "auto":
        if torch.cuda.is_available():
            return "cuda"
        mps = getattr(torch.backends, "mps", None)
        if mps is not None and mps.is_available():
            return "mps"
        return "cpu"
    kind = preference.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        raise CellError(f"--hpspec-device={preference}: CUDA is not available on this machine; "
                        "use --hpspec-device=auto or cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise CellError(f"--hpspec-device={preference}: MPS is not available on this machine; "
                        "use --hpspec-device=auto or cpu")
    return preference


def _seed_torch(seed: int) -> None:
    """torch.manual_seed, without its queued lazy seeding of absent backends (it formats a
    stack trace per call for CUDA, XPU and MTIA even on a machine that has none)."""
    torch.default_generator.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        torch.mps.manual_seed(seed)


@contextlib.contextmanager
def torch_state(seed: int) -> Iterator[None]:
    """Seed every RNG for one run and put all of torch's global state back afterwards (RNGs,
    threads, default dtype, deterministic flags, grad mode, float32 matmul precision, cuDNN
    flags, CUDA memory fractions), so a cell's result depends on its seed alone and not on
    the cells that ran before it."""
    import numpy as np

    saved_cpu = torch.get_rng_state()
    saved_cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    saved_py = random.getstate()
    saved_np = np.random.get_state()
    threads = torch.get_num_threads()
    dtype = torch.get_default_dtype()
    deterministic = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    grad = torch.is_grad_enabled()
    matmul = torch.get_float32_matmul_precision()
    cudnn = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
    fractions = ([torch.cuda.get_per_process_memory_fraction(i)
                  for i in range(torch.cuda.device_count())]
                 if torch.cuda.is_initialized() else None)
    try:
        _seed_torch(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        yield
    finally:
        torch.set_rng_state(saved_cpu)
        if saved_cuda is not None:
            torch.cuda.set_rng_state_all(saved_cuda)
        random.setstate(saved_py)
        np.random.set_state(saved_np)
        torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)
        _restore_deterministic(deterministic, warn_only)
        torch.set_grad_enabled(grad)
        torch.set_float32_matmul_precision(matmul)
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = cudnn
        if fractions is not None:
            for i, f in enumerate(fractions):
                torch.cuda.set_per_process_memory_fraction(f, i)


def _restore_deterministic(mode: bool, warn_only: bool) -> None:
    """Put torch's deterministic-algorithms flags back, without importing torch._inductor.

    ``torch.use_deterministic_algorithms`` imports ``torch._inductor.config`` (and with it
    torch._dynamo: over a second on a quiet CPU) to mirror the flag into the compiler's
    config. A run that did not touch the flags needs nothing put back; one that did, through
    the public call, has imported the compiler's config already, and the public call keeps
    the two in step. Only when the flags changed and the compiler was never imported is the
    flag set in torch's core directly (the compiler's config reads its own default when it is
    first imported, as it would have without this run).
    """
    if (torch.are_deterministic_algorithms_enabled() == mode
            and torch.is_deterministic_algorithms_warn_only_enabled() == warn_only):
        return
    if "torch._inductor.config" in sys.modules:
        torch.use_deterministic_algorithms(mode, warn_only=warn_only)
    else:
        torch._C._set_deterministic_algorithms(mode, warn_only=warn_only)


def _model_work(model: Any, batch_size: int | None) -> float | None:
    """Parameters x batch size: the size measure of the thread rule (hpspec.threads)."""
    try:
        return float(sum(p.numel() for p in model.parameters()) * (batch_size or 1))
    except Exception:  # an exotic model: the rule keeps torch's own count
        return None


# ---------------------------------------------------------------------------------- data

_DEVICE_DATA: dict[tuple[Any, str], Data] = {}


def device_data(spec: DataSpec, device: str) -> Data:
    """The data set's tensors on ``device``, moved there once per process."""
    key = (spec.key if spec.preloaded is None else id(spec.preloaded), device)
    data = _DEVICE_DATA.get(key)
    if data is None:
        if len(_DEVICE_DATA) >= 8:
            _DEVICE_DATA.clear()
        data = spec.load().to(device)
        _DEVICE_DATA[key] = data
    return data


# -------------------------------------------------------------------------------- recipes


class _OneByOne(Exception):
    """A cell the stacked engine leaves to the one-by-one runner (custom recipe metrics)."""


def _coerce_recipe(out: Any, where: str) -> Recipe:
    if isinstance(out, Recipe):
        recipe = out
    elif isinstance(out, Mapping) and "model" in out and "optimizer" in out:
        extra = set(out) - {"model", "optimizer", "loss", "scheduler", "metrics"}
        if extra:
            raise CellError(f"{where}: the returned dict has unknown keys {sorted(extra)}; "
                            "allowed: model, optimizer, loss, scheduler, metrics")
        recipe = Recipe(**out)
    elif isinstance(out, tuple) and len(out) == 2:
        recipe = Recipe(out[0], out[1])
    else:
        raise CellError(
            f"{where}: returned {type(out).__name__}, not a recipe; fix: return "
            "(model, optimizer), or hp.Recipe(model, optimizer, loss=..., scheduler=...), "
            "or make the function a generator that yields a dict of metrics per epoch"
        )
    if not isinstance(recipe.model, torch.nn.Module):
        raise CellError(f"{where}: the recipe's model is a {type(recipe.model).__name__}, "
                        "not a torch.nn.Module")
    if not isinstance(recipe.optimizer, torch.optim.Optimizer):
        raise CellError(f"{where}: the recipe's optimizer is a "
                        f"{type(recipe.optimizer).__name__}, not a torch.optim.Optimizer; fix: "
                        "return (model, torch.optim.SGD(model.parameters(), lr=case.lr))")
    if recipe.loss is not None and not callable(recipe.loss):
        raise CellError(f"{where}: the recipe's loss is not callable")
    if recipe.metrics is not None and not (
            isinstance(recipe.metrics, Mapping)
            and all(isinstance(k, str) and callable(f) for k, f in recipe.metrics.items())):
        raise CellError(f"{where}: the recipe's metrics must map names to functions "
                        "fn(model, data) -> number; fix: "
                        "hp.Recipe(model, opt, metrics={'grad_norm': grad_norm})")
    if recipe.scheduler is not None and (isinstance(recipe.scheduler, type) or not callable(
            getattr(recipe.scheduler, "step", None))):
        what = (f"the class {recipe.scheduler.__name__}" if isinstance(recipe.scheduler, type)
                else f"a {type(recipe.scheduler).__name__}")
        raise CellError(f"{where}: the recipe's scheduler is {what}, not a scheduler object "
                        "with a step() method; fix: build it on the optimizer, e.g. "
                        "scheduler=torch.optim.lr_scheduler.StepLR(opt, step_size=5)")
    return recipe


def _check_model_kind(model: Any, data: Data, where: str) -> None:
    """Kinds of model the loop cannot train, said before torch fails deep inside a step."""
    params = list(model.parameters()) + list(model.buffers())
    if any(p.is_meta for p in params):
        raise CellError(f"{where}: the model is on the meta device (its tensors have shapes but "
                        "no values), so it cannot be trained; fix: build it without "
                        "torch.device('meta'), or call model.to_empty(device='cpu') and "
                        "initialise its parameters before returning it")
    x = data.x_train
    floats = {p.dtype for p in params if p.is_floating_point()}
    if x.is_floating_point() and floats and floats != {x.dtype}:
        have = ", ".join(sorted(str(d).replace("torch.", "") for d in floats))
        want = str(x.dtype).replace("torch.", "")
        raise CellError(f"{where}: the model's parameters are {have} but the data's features "
                        f"are {want}; fix: build the model in {want} (drop .double() / "
                        f"dtype=..., or return model.to(torch.{want}))")


#: torch's words for an input of the wrong dtype (first batch only).
_DTYPE_ERRORS = ("must have the same dtype", "scalar types", "scalar type", "expected scalar",
                 "Expected tensor for argument")


def _dtype_message(e: BaseException, model: Any, data: Data, where: str) -> str | None:
    text = str(e)
    if not any(t in text for t in _DTYPE_ERRORS):
        return None
    x = str(data.x_train.dtype).replace("torch.", "")
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if "indices" in text and any(isinstance(m, torch.nn.Embedding) for m in model.modules()):
        return (f"{where}: the model's nn.Embedding needs integer token ids but the data's "
                f"features are {x} (hp.datasets.tensors stores features as float32); fix: "
                "convert them where the model reads them, e.g. self.embed(x.long())")
    return (f"{where}: the model cannot read the data's {x} features ({first}); fix: make the "
            f"model's dtype match the data ({x}), or convert the input in forward()")


def _fits(out: Any, yb: Any, data: Data) -> bool:
    if not isinstance(out, torch.Tensor):
        return False
    if data.task == CLASSIFICATION:
        return out.dim() == 2 and out.shape[1] == data.n_classes
    return out.shape == yb.shape


def _check_first_batch(out: Any, yb: Any, loss: Any, data: Data, where: str) -> None:
    """Turn the usual shape mistakes into messages that name the fix, once, on step one."""
    if not isinstance(out, torch.Tensor):
        raise CellError(f"{where}: the model returned a {type(out).__name__}, not a tensor")
    if data.task == CLASSIFICATION:
        if out.dim() != 2 or out.shape[1] != data.n_classes:
            raise CellError(
                f"{where}: the model's output has shape {tuple(out.shape)} but the data has "
                f"{data.n_classes} classes, so it should be (batch, {data.n_classes}); fix: "
                f"make the last layer's out_features {data.n_classes} "
                "(case.data.n_classes)"
            )
    elif out.shape != yb.shape:
        raise CellError(
            f"{where}: the model's output has shape {tuple(out.shape)} but the targets "
            f"{tuple(yb.shape)}; fix: make the last layer's out_features "
            f"{yb.shape[1] if yb.dim() == 2 else 1}"
        )
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
        shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__
        raise CellError(f"{where}: the loss must be a scalar tensor, got {shape}; fix: "
                        "reduce it (reduction='mean') before returning it")


def _check_input_width(model: Any, data: Data, where: str) -> None:
    """After a forward that raised: when the first layer that has a width
    (``in_features``) does not take the data's features, say so in one line."""
    first = next((m for m in model.modules() if isinstance(getattr(m, "in_features", None),
                                                           int)), None)
    if first is None or data.x_train.dim() != 2:
        return
    width = int(data.x_train.shape[1])
    if first.in_features != width:
        raise CellError(
            f"{where}: the model's first layer ({type(first).__name__}) takes "
            f"{first.in_features} inputs but the data has {width} features per sample; fix: "
            f"make its in_features {width} (case.data.n_features)"
        )


@torch.no_grad()
def _try_first_batch(model: Any, loss_fn: Any, data: Data, batch_size: int, where: str) -> None:
    """One batch through the model and the loss, before any training, so that the usual
    shape mistakes fail with their fix rather than deep inside a step."""
    xb, yb = data.x_train[:batch_size], data.y_train[:batch_size]
    try:
        out = model(xb.clone())  # a copy: see _evaluate
    except (RuntimeError, TypeError) as e:
        message = _dtype_message(e, model, data, where)
        if message is None:
            if isinstance(e, RuntimeError):
                _check_input_width(model, data, where)
            raise
        raise CellError(message) from None
    _check_first_batch(out, yb, loss_fn(out, yb) if _fits(out, yb, data) else None, data, where)


@torch.no_grad()
def _evaluate(model: torch.nn.Module, x: Any, y: Any, loss_fn: Any, task: str) -> dict[str, float]:
    was_training = model.training
    model.eval()
    n = x.shape[0]
    # The model sees copies: a forward that writes into its input (an in-place activation
    # first) must not change the data that every later cell is evaluated on.
    if n <= _EVAL_CHUNK:  # one batch: the fewest operators and one host read
        out = model(x.clone())
        loss = loss_fn(out, y).detach().float()
        model.train(was_training)
        if task != CLASSIFICATION:
            return {"loss": float(loss)}
        both = torch.stack([loss, (out.argmax(dim=1) == y).float().mean()]).tolist()
        return {"loss": both[0], "acc": both[1]}
    total = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.long)
    for i in range(0, n, _EVAL_CHUNK):
        xb, yb = x[i : i + _EVAL_CHUNK], y[i : i + _EVAL_CHUNK]
        out = model(xb.clone())
        total += loss_fn(out, yb).detach().float() * xb.shape[0]
        if task == CLASSIFICATION:
            correct += (out.argmax(dim=1) == yb).sum()
    model.train(was_training)
    result = {"loss": float(total) / n}
    if task == CLASSIFICATION:
        result["acc"] = float(correct) / n
    return result


class Deadline:
    """A cell's time budget: checked between steps (and between loop-mode epochs)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.at = time.perf_counter() + seconds
        #: Epochs the running seed has finished (the watchdog's message reports it).
        self.epochs_done = 0

    def exceeded(self, epochs_done: int, where: str) -> None:
        raise BudgetExceeded(
            f"{where}: budget exceeded after {epochs_done} epochs: the cell's time budget is "
            f"{self.seconds:g} s; fix: raise timeout= on the experiment (or "
            "--hpspec-timeout), or train fewer epochs or a smaller model")

    def interrupted(self, where: str, seed: int) -> Callable[[float], BudgetExceeded]:
        """The error for the watchdog to raise when it stopped seed ``seed`` mid-step."""
        def error(late: float) -> BudgetExceeded:
            far = late > max(FAR_PAST, 0.5 * self.seconds)
            return BudgetExceeded(
                f"{where}: budget exceeded after {self.epochs_done} epochs: the cell's time "
                f"budget is {self.seconds:g} s; fix: raise timeout= on the experiment (or "
                "--hpspec-timeout), or train fewer epochs, or find what blocks (seed "
                f"{seed} was stopped mid-step by hpspec's watchdog"
                + (f", {late:.1f} s after the budget: the code held the interpreter in one "
                   "long C or CUDA call, which cannot be interrupted sooner)" if far else ")"))
        return error


#: Measurements that depend on the model and batch, not on the seed: probed on a cell's first
#: seed and copied to the others.
PROBED = MEASURE_PROBED


def _check_parameters(model: Any, opt: Any, where: str) -> None:
    """Training that would do nothing without a word: a model without parameters, or an
    optimizer over parameters none of which are the model's."""
    params = list(model.parameters())
    if not params:
        raise CellError(f"{where}: the model ({type(model).__name__}) has no parameters, so "
                        "training cannot change it; fix: give it trainable layers "
                        "(torch.nn.Linear, ...) registered as attributes")
    mine = {id(p) for p in params}
    theirs = [p for g in opt.param_groups for p in g["params"]]
    if theirs and not any(id(p) in mine for p in theirs):
        raise CellError(f"{where}: the optimizer holds {len(theirs)} parameter tensors and none "
                        f"of them is the model's ({type(model).__name__}): it was built over "
                        "another model, so this one would never change; fix: build it from the "
                        "returned model, torch.optim.SGD(model.parameters(), lr=case.lr)")


def _train_recipe(
    exp: Experiment, cell: Cell, case: Case, data: Data,
    probed: Mapping[str, float] | None = None, progress: Progress | None = None,
    inference: bool = False, stop: StopRule | None = None, deadline: Deadline | None = None,
    threads: Threads = "auto",
) -> SeedResult:
    __tracebackhide__ = True
    where = f"{exp.where}[{cell.id}]"
    recipe = _coerce_recipe(exp.fn(case), where)
    _check_model_kind(recipe.model, data, where)
    device = case.device
    model = recipe.model.to(device)
    model.train()
    opt = recipe.optimizer
    loss_fn = recipe.loss or default_loss(data.task)
    batch_size = case.batch_size
    assert batch_size is not None
    # The caller's torch_state puts the count back afterwards.
    n_threads = choose_threads(threads, device, _model_work(model, batch_size),
                               torch.get_num_threads())
    if n_threads != torch.get_num_threads():
        torch.set_num_threads(n_threads)
    x, y = data.x_train, data.y_train
    n = x.shape[0]
    steps = math.ceil(n / batch_size)
    sizes = torch.full((steps,), float(batch_size), device=device)
    sizes[-1] = n - batch_size * (steps - 1)
    host_sizes = sizes.cpu()
    order = torch.Generator(device="cpu").manual_seed(case.seed)

    _try_first_batch(model, loss_fn, data, batch_size, where)
    _check_parameters(model, opt, where)
    start_train = _evaluate(model, x, y, loss_fn, data.task)
    start_val = _evaluate(model, data.x_val, data.y_val, loss_fn, data.task)
    initial = {"train_loss": start_train["loss"], "val_loss": start_val["loss"]}
    if "acc" in start_val:
        initial["val_acc"] = start_val["acc"]
    limit = divergence_limit(start_train["loss"])

    cache_key = (probe_key("one by one", model, opt, loss_fn, data, batch_size, device)
                 if probed is None else None)
    if cache_key is not None:
        probed = recall_probe(cache_key)
    probe = probed is None
    measurements: dict[str, float] = dict(probed or {})
    if probe:
        measurements.update(model_size(model))
    curves: dict[str, list[float]] = {k: [] for k in initial}
    seconds: list[float] = []
    timed = TimedSteps(steps)
    diverged: Divergence | None = None
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    # live-tensor memory where the allocator has no peak counter (CPU, MPS), on the last
    # warm-up step: step 2, or the only step of an epoch when the batch holds the whole
    # training set (the optimizer state is then made inside the probed step, and counted)
    probe_live = probe and not cuda
    memory: LiveMemory | None = None

    def step(i: int, perm: torch.Tensor, step_losses: list[torch.Tensor]) -> None:
        idx = perm[i * batch_size : (i + 1) * batch_size]
        step_losses.append(train_step(model, opt, loss_fn, x[idx], y[idx]))

    for epoch in range(1, case.epochs + 1):
        if deadline is not None:
            deadline.epochs_done = epoch - 1
        perm = torch.randperm(n, generator=order).to(device, non_blocking=True)
        # Losses stay on the device (a list of 0-d tensors: no copy op per step) until the
        # end of the epoch, where one stack and one host read bring them back.
        step_losses: list[torch.Tensor] = []
        sync(device)
        t0 = time.perf_counter()
        first = 0
        if epoch == 1:
            # Warm-up steps: real training steps, with the probes on the first seed.
            first = min(WARMUP_STEPS, steps)
            # Probes, on the last warm-up step (the optimizer state exists by then, and the
            # previous step's gradients are freed and made again): FLOPs and live memory in
            # one dispatch mode.
            for i in range(first):
                if not (probe and i == first - 1):
                    step(i, perm, step_losses)
                    continue
                if probe_live:
                    memory = probe_memory(model, opt, data)
                    with memory:
                        step(i, perm, step_losses)
                    flops = memory.flops
                else:
                    with count_flops() as counter:
                        step(i, perm, step_losses)
                    flops = counter.flops
                measurements["flops_per_sample"] = flops / float(host_sizes[i])
            sync(device)
        t1 = time.perf_counter()
        for i in range(first, steps):
            if deadline is not None and time.perf_counter() > deadline.at:
                deadline.exceeded(epoch - 1, where)
            idx = perm[i * batch_size : (i + 1) * batch_size]
            step_losses.append(train_step(model, opt, loss_fn, x[idx], y[idx]))
        if recipe.scheduler is not None:
            recipe.scheduler.step()
        sync(device)
        t2 = time.perf_counter()
        seconds.append(t2 - t0)
        timed.add(t2 - t1, first, host_sizes)
        # One host read per epoch: the per-step losses stay on the device until here.
        host = torch.stack(step_losses).float().cpu()
        train_loss = float((host * host_sizes).sum()) / n
        val = _evaluate(model, data.x_val, data.y_val, loss_fn, data.task)
        curves["train_loss"].append(train_loss)
        curves["val_loss"].append(val["loss"])
        if "val_acc" in curves:
            curves["val_acc"].append(val["acc"])
        for name, fn in (recipe.metrics or {}).items():
            value = _as_float(fn(model, data))
            if value is None:
                raise CellError(f"{where}: metric {name!r} returned {fn(model, data)!r}, not a "
                                "number; fix: return a float (e.g. tensor.item())")
            curves.setdefault(name, []).append(value)
        if progress is not None:
            progress(epoch, case.epochs, train_loss)
        diverged = divergence(host, limit, start_train["loss"], epoch)
        if diverged is not None:
            break
        if stop is not None and stop(curves):
            break  # every claim on this cell is decided (early stop)

    measurements.update(timed.measurements())
    measurements["threads"] = float(n_threads)
    if cuda and probe:
        measurements["peak_memory"] = float(torch.cuda.max_memory_allocated(device))
    elif memory is not None:
        measurements["peak_memory"] = float(memory.peak)
    if inference and not any(m.startswith("inference_") for m in measurements):
        measurements.update(inference_profile(model, data.x_val[:batch_size]))
    if probe and cache_key is not None:
        remember_probe(cache_key, {m: v for m, v in measurements.items() if is_probed(m)})
    peak = device_peak_flops(device)
    if peak and "flops_per_sample" in measurements and "samples_per_s" in measurements:
        measurements["mfu"] = (measurements["flops_per_sample"] * measurements["samples_per_s"]
                               / peak)
    return SeedResult(
        seed=case.seed,
        curves=curves,
        epoch_seconds=seconds,
        initial=initial,
        diverged=diverged,
        measurements=measurements,
        epochs_planned=case.epochs,
        steps_per_epoch=steps,
    )


# ------------------------------------------------------------------------------ loop mode


def _as_float(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return float(value.detach().cpu().item())
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        try:
            v = item()
        except Exception:
            return None
        return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
    return None


#: A loop-mode generator with no ``epochs=`` may yield this many epochs before it is taken for
#: an endless loop and its cell fails (rather than running forever without a word).
MAX_LOOP_EPOCHS = 1000


def _run_loop(exp: Experiment, cell: Cell, case: Case,
              deadline: Deadline | None = None) -> SeedResult:
    __tracebackhide__ = True
    where = f"{exp.where}[{cell.id}]"
    gen = exp.fn(case)
    curves: dict[str, list[float]] = {}
    seconds: list[float] = []
    diverged: Divergence | None = None
    epoch = 0
    t0 = time.perf_counter()
    try:
        for item in gen:
            sync(case.device)
            seconds.append(time.perf_counter() - t0)
            epoch += 1
            if deadline is not None:
                deadline.epochs_done = epoch
            if not isinstance(item, Mapping):
                raise CellError(f"{where}: epoch {epoch} yielded a {type(item).__name__}; "
                                "fix: yield a dict of metrics, e.g. "
                                "yield {'train_loss': loss, 'val_acc': acc}")
            for key, value in item.items():
                v = _as_float(value)
                if not isinstance(key, str) or v is None:
                    raise CellError(
                        f"{where}: epoch {epoch} yielded {key!r}: {value!r}, which is not a "
                        "number; fix: yield plain numbers (loss.item()) keyed by metric name"
                    )
                series = curves.setdefault(key, [math.nan] * (epoch - 1))
                series.append(v)
            for series in curves.values():
                if len(series) < epoch:
                    series.append(math.nan)
            for key, series in curves.items():
                if "loss" not in key:
                    continue
                v, first = series[-1], series[0]
                if not math.isfinite(v):
                    diverged = Divergence(epoch, 0, f"{key} {v:g} is not finite")
                elif math.isfinite(first) and abs(v) > DIVERGENCE_FACTOR * max(abs(first), 1e-8):
                    diverged = Divergence(
                        epoch, 0, f"{key} {v:.4g} > {DIVERGENCE_FACTOR:g}x its start {first:.4g}"
                    )
            if diverged is not None or (case.epochs and epoch >= case.epochs):
                break
            if not case.epochs and epoch >= MAX_LOOP_EPOCHS:
                raise CellError(
                    f"{where}: the generator yielded {epoch} epochs and has not ended, and the "
                    "experiment sets no epochs=; an endless loop? fix: pass epochs=N to "
                    "@experiment (hpspec stops the generator after N yields), or end the loop")
            if deadline is not None and time.perf_counter() > deadline.at:
                deadline.exceeded(epoch, where)
            t0 = time.perf_counter()
    finally:
        close = getattr(gen, "close", None)
        if close is not None:
            close()
    if exp.metrics is not None:
        missing = sorted(exp.metrics - set(curves))
        if missing and diverged is None:
            raise CellError(f"{where}: declared metrics {missing} were never yielded; yielded: "
                            f"{sorted(curves) or 'nothing'}")
    # The first epoch pays for warm-up; leave it out when there are more.
    timed = seconds[1:] if len(seconds) > 1 else seconds
    return SeedResult(
        seed=case.seed,
        curves=curves,
        epoch_seconds=seconds,
        diverged=diverged,
        measurements={"time_per_epoch": sum(timed) / len(timed)} if timed else {},
        epochs_planned=case.epochs or epoch,
    )


# ---------------------------------------------------------------------------------- cells


def run_seed(
    exp: Experiment,
    cell: Cell,
    seed: int,
    device: str,
    probed: Mapping[str, float] | None = None,
    progress: Progress | None = None,
    inference: bool = False,
    stop: StopRule | None = None,
    deadline: Deadline | None = None,
    threads: Threads = "auto",
) -> SeedResult:
    """Train one seed of one cell, in its own seeded, restored torch state. ``probed`` carries
    the model's size, FLOPs and memory from an earlier seed of the cell (else they are probed);
    ``threads`` is the intra-op thread setting (see :mod:`hpspec.threads`)."""
    __tracebackhide__ = True
    data = device_data(exp.data, device) if exp.data is not None else None
    case = _case(exp, cell, seed, device, data)
    # The watchdog holds the budget inside a step too (a sleep, a blocking call).
    guard: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if deadline is not None:
        deadline.epochs_done = 0
        interrupted = deadline.interrupted(f"{exp.where}[{cell.id}]", seed)
        guard = watchdog(deadline.at, interrupted)
    try:
        with torch_state(seed), guard:
            return _train_seed(exp, cell, case, data, seed, device, probed, progress,
                               inference, stop, deadline, threads)
    except BudgetAlarm:
        # Another thread's alarm that landed in the guard's own exit, past its reach.
        assert deadline is not None
        raise interrupted(max(0.0, time.perf_counter() - deadline.at)) from None


def _train_seed(exp: Experiment, cell: Cell, case: Case, data: Data | None, seed: int,
                device: str, probed: Mapping[str, float] | None, progress: Progress | None,
                inference: bool, stop: StopRule | None, deadline: Deadline | None,
                threads: Threads) -> SeedResult:
    __tracebackhide__ = True
    try:
        if exp.mode == "loop":
            return _run_loop(exp, cell, case, deadline)
        assert data is not None
        # hpspec builds the recipe and steps its optimizer: no compiler needed for that
        with compiler_import_deferred():
            return _train_recipe(exp, cell, case, data, probed, progress, inference,
                                 stop, deadline, threads)
    except NoGradPath:
        raise CellError(
            f"{exp.where}[{cell.id}]: the loss has no gradient path to the model's "
            "parameters (it was detached, computed under torch.no_grad(), or the "
            "parameters have requires_grad=False), so training would change nothing; "
            "fix: compute the loss from the model's output without .detach()/.item() or "
            "no_grad, and leave the parameters trainable") from None
    except (torch.cuda.OutOfMemoryError, MemoryError) as e:
        first_line = str(e).splitlines()[0] if str(e) else ""
        # The exception's frames hold the model, its activations and the batch: drop
        # them before collecting, so the memory is back for the next cell.
        e.__traceback__ = None
        del e
        gc.collect()
        if device.startswith("cuda"):
            torch.cuda.empty_cache()
        raise CellError(
            f"{exp.where}[{cell.id}]: out of memory on {device} at batch_size="
            f"{case.batch_size} (seed {seed}): {first_line}"
            f"{_memory_figures(device)}; fix: lower batch_size or the model's size for "
            "this cell"
        ) from None


def _memory_figures(device: str) -> str:
    if device.startswith("cuda"):
        free, total = torch.cuda.mem_get_info(device)
        return (f" [{torch.cuda.memory_allocated(device) / 2**20:.0f} MiB allocated, "
                f"{free / 2**20:.0f} MiB free of {total / 2**20:.0f} MiB]")
    try:
        pages, size = os.sysconf("SC_AVPHYS_PAGES"), os.sysconf("SC_PAGE_SIZE")
        total = os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return ""
    return f" [{pages * size / 2**20:.0f} MiB free of {total * size / 2**20:.0f} MiB RAM]"


CellProgress = Callable[[int, int, int, int, float], None]  # seed k, of n, epoch, epochs, loss


def run_cell(
    exp: Experiment,
    cell: Cell,
    device: str,
    seeds: tuple[int, ...] | None = None,
    probed: Mapping[str, float] | None = None,
    progress: CellProgress | None = None,
    inference: bool = False,
    stop: StopRule | None = None,
    on_seed: Callable[[SeedResult], None] | None = None,
    timeout: float | None = None,
    threads: Threads = "auto",
) -> CellResult:
    """Train every seed of a cell, one after the other; the first probes size, FLOPs and
    memory (unless ``probed`` has them from earlier seeds) and the others reuse them."""
    __tracebackhide__ = True
    todo = seeds if seeds is not None else exp.seeds
    budget = exp.timeout if exp.timeout is not None else timeout
    deadline = Deadline(budget) if budget is not None else None
    runs: list[SeedResult] = []
    for k, seed in enumerate(todo):
        report = None
        if progress is not None:
            def report(epoch: int, epochs: int, loss: float, k: int = k) -> None:
                progress(k + 1, len(todo), epoch, epochs, loss)
        run = run_seed(exp, cell, seed, device, probed, report, inference, stop, deadline,
                       threads)
        if probed is None:
            probed = {m: v for m, v in run.measurements.items()
                      if is_probed(m)}
        runs.append(run)
        if on_seed is not None:
            on_seed(run)  # committed before the next seed starts
    return CellResult(
        experiment=exp.name,
        cell_id=cell.id,
        params=cell.as_dict(),
        device=device,
        seeds=tuple(runs),
    )


# ------------------------------------------------------------------------ stacked groups


def _case(exp: Experiment, cell: Cell, seed: int, device: str, data: Data | None) -> Case:
    return Case(
        cell.as_dict(),
        seed=seed,
        device=device,
        epochs=exp.epochs_for(cell) if (exp.epochs or "epochs" in cell.as_dict()) else 0,
        batch_size=exp.batch_size_for(cell),
        data=data,
        experiment=exp.name,
        cell_id=cell.id,
    )


def stackable_cells(exp: Experiment, cells: list[Cell]) -> list[list[Cell]]:
    """Cells that could share a stacked model (recipe mode): same batch size. Cells that
    differ in ``epochs`` share one run to the largest count (see :func:`run_stacked`)."""
    if exp.mode != "recipe" or not exp.stack:
        return [[c] for c in cells]
    by: dict[Any, list[Cell]] = {}
    for c in cells:
        by.setdefault(exp.batch_size_for(c), []).append(c)
    return list(by.values())


def _same_recipe(a: Recipe, b: Recipe) -> str | None:
    """How two builds of one cell's recipe (for two epoch counts, under one seed) differ, in
    words; None when they are the same training: initial weights and buffers, optimizer and
    its settings, loss, no scheduler and no hooks (a step, gradient or forward hook, or a
    replaced ``opt.step``, is code that may read ``case.epochs`` where no setting shows it)."""
    from hpspec.engine.stacked import hooks

    if a.scheduler is not None or b.scheduler is not None:
        return "it has a learning-rate scheduler"
    hooked = hooks(a.model, a.optimizer, a.loss) or hooks(b.model, b.optimizer, b.loss)
    if hooked is not None:
        return f"it has hooks: {hooked}"
    if repr(a.model) != repr(b.model):
        return "its model differs"
    sa, sb = a.model.state_dict(), b.model.state_dict()
    if sa.keys() != sb.keys() or any(
            sa[k].shape != sb[k].shape or not torch.equal(sa[k], sb[k]) for k in sa):
        return "its initial weights differ"
    if type(a.optimizer) is not type(b.optimizer):
        return "its optimizer differs"

    def settings(opt: torch.optim.Optimizer) -> list[dict[str, Any]]:
        return [{k: repr(v) for k, v in g.items() if k != "params"} for g in opt.param_groups]

    if settings(a.optimizer) != settings(b.optimizer):
        return "its optimizer's settings differ"
    if repr(a.loss) != repr(b.loss):
        return "its loss differs"
    return None


#: :func:`_epoch_bound`'s answers per recipe function: a halving search asks again for the
#: same cells at every rung, and each answer costs two builds of the recipe.
_BOUND_ANSWERS: weakref.WeakKeyDictionary[Callable[..., Any], dict[Any, str | None]] = (
    weakref.WeakKeyDictionary())


def _epoch_bound(exp: Experiment, cell: Cell, seed: int, device: str, data: Data,
                 other: int) -> str | None:
    """Why ``cell``'s recipe depends on the total epoch count (it is built again as if it
    trained ``other`` epochs and compared), or None when it does not. Remembered per recipe
    function, experiment, cell (all its hyperparameters, fixed ones too: a function declared
    again may fix others under the same cell ids), batch size, seed, device, data and the two
    epoch counts."""
    key = (exp.where, exp.name, exp.data, cell.id,
           tuple((k, type(v), repr(v)) for k, v in cell.params), exp.batch_size_for(cell),
           seed, device, exp.epochs_for(cell), other)
    try:
        answers = _BOUND_ANSWERS.setdefault(exp.fn, {})
        if key in answers:
            return answers[key]
    except TypeError:  # a function that cannot be weakly referenced, data that cannot hash
        return _epoch_bound_now(exp, cell, seed, device, data, other)
    answers[key] = found = _epoch_bound_now(exp, cell, seed, device, data, other)
    return found


def _epoch_bound_now(exp: Experiment, cell: Cell, seed: int, device: str, data: Data,
                     other: int) -> str | None:
    where = f"{exp.where}[{cell.id}]"
    builds = []
    for epochs in (exp.epochs_for(cell), other):
        base = _case(exp, cell, seed, device, data)
        params = base.params
        if "epochs" in params:
            params["epochs"] = epochs
        case = Case(params, seed=seed, device=device, epochs=epochs,
                    batch_size=base.batch_size, data=data, experiment=base.experiment,
                    cell_id=base.cell_id)
        with torch_state(seed):
            builds.append(_coerce_recipe(exp.fn(case), where))
    return _same_recipe(*builds)


def run_stacked(
    exp: Experiment,
    cells: list[Cell],
    device: str,
    seeds: tuple[int, ...] | None = None,
    progress: Progress | None = None,
    stop_rules: Mapping[str, Any] | None = None,
    groups: list[StackGroup] | None = None,
    threads: Threads = "auto",
) -> tuple[dict[str, CellResult], dict[str, str]]:
    """Train the cells' seeds that stack as one model per architecture group.

    Returns the results of the cells trained that way and, for cells that were not stacked,
    why not (they are left for :func:`run_cell`). Cells given here must share a batch size
    (see :func:`stackable_cells`); cells that differ in epochs share one run to the largest
    count and each reads its own prefix, unless its recipe changes with the epoch count.
    ``groups`` receives one :class:`~hpspec.plan.StackGroup` per group trained, for the
    summary's line (:func:`hpspec.plan.stacked_note`).
    """
    __tracebackhide__ = True
    if exp.mode != "recipe" or not exp.stack or exp.data is None or not cells:
        return {}, {}
    # hpspec builds the recipes and steps the optimizers itself here: torch's compiler,
    # which building an optimizer would import, is not needed (hpspec.engine.compiler)
    with compiler_import_deferred():
        return _run_stacked(exp, cells, device, seeds, progress, stop_rules, groups, threads)


def _run_stacked(
    exp: Experiment,
    cells: list[Cell],
    device: str,
    seeds: tuple[int, ...] | None,
    progress: Progress | None,
    stop_rules: Mapping[str, Any] | None,
    groups: list[StackGroup] | None,
    threads: Threads,
) -> tuple[dict[str, CellResult], dict[str, str]]:
    __tracebackhide__ = True
    from hpspec.engine.stacked import MAX_MEMBERS, Member, chunk_size, plan, split, train_group

    data = device_data(exp.data, device)
    run_seeds = tuple(seeds or exp.seeds)
    counts = {exp.epochs_for(c) for c in cells}
    most = max(counts)
    broken: dict[str, str] = {}
    bound: dict[str, str] = {}
    why_by_cell: dict[str, str] = {}
    results: dict[str, list[SeedResult]] = {}
    trained: list[list[Member]] = []
    # Members are built cell by cell and trained in chunks of bounded size (memory and work per
    # step): a 10,000-cell grid never holds 10,000 models at once, and each chunk ends with
    # results (and progress) instead of one silent group for the whole grid.
    members: list[Member] = []
    owner: list[Cell] = []
    cap: int | None = None
    widest = 0  # weights of the widest member built so far
    chunks = [0, 1]  # chunks trained so far, chunks expected (for the progress line)

    def chunk_progress(epoch: int, epochs: int, loss: float) -> None:
        if progress is not None:  # epochs across the chunks, so the line keeps moving
            progress(chunks[0] * epochs + epoch, chunks[1] * epochs, loss)

    def train_buffered() -> None:
        planned, why = plan(members, data.task, False,
                            exp.batch_size_for(owner[0]) if owner else None, device)
        for i, reason in why.items():
            why_by_cell.setdefault(members[i].cell_id, reason)
        # A group larger than memory and the step budget allow trains in chunks (a cell's
        # seeds may then land in different chunks; its results are gathered below).
        chunked = [chunk for idx in planned
                   for part in split(idx, members, exp.batch_size_for(owner[idx[0]]) or 1,
                                     data.x_val.shape[0], device)
                   for chunk in (part[i:i + (cap or len(part))]
                                 for i in range(0, len(part), cap or len(part)))]
        for idx in chunked:
            train_chunk([members[i] for i in idx], owner[idx[0]])
        members.clear()
        owner.clear()

    def train_chunk(group: list[Member], first_cell: Cell) -> None:
        batch_size = exp.batch_size_for(first_cell)
        assert batch_size is not None
        try:
            # The members share an architecture and a loss kind (that is what grouped them):
            # one member's first batch answers for all of them.
            m = group[0]
            _try_first_batch(copy.deepcopy(m.model).to(device),
                             m.loss or default_loss(data.task), data, batch_size,
                             f"{exp.where}[{m.cell_id}]")
        except CellError:
            for m in group:
                why_by_cell.setdefault(m.cell_id, "its model does not fit the data (reported "
                                       "by its own run)")
            return
        rules = [stop_rules.get(m.cell_id) if stop_rules else None for m in group]
        # The thread rule looks at one member (the largest), as if it trained alone: a cell
        # then gets the same count stacked or not (hpspec.threads).
        works = [_model_work(m.model, batch_size) for m in group]
        before = torch.get_num_threads()
        n_threads = choose_threads(threads, device,
                                   None if None in works else max(works),  # type: ignore[type-var]
                                   before)
        try:
            if n_threads != before:
                torch.set_num_threads(n_threads)
            epochs = max(m.epochs for m in group)
            runs = train_group(group, data, batch_size, epochs, device, DIVERGENCE_FACTOR,
                               rules, chunk_progress)
        except Exception as e:
            if not _uses_vmap(group[0], data):
                raise
            # torch.func could not run this model (data-dependent control flow, an
            # operator without a batching rule): its cells train one by one
            first_line = (str(e).splitlines() or [""])[0][:160]
            for m in group:
                why_by_cell.setdefault(m.cell_id, f"torch.func.vmap could not run the model "
                                       f"({type(e).__name__}: {first_line})")
            return
        finally:
            if torch.get_num_threads() != before:
                torch.set_num_threads(before)
        chunks[0] += 1
        chunks[1] = max(chunks[1], chunks[0] + 1)
        trained.append(group)
        for m, r in zip(group, runs, strict=True):
            r = attrs.evolve(r, measurements={**r.measurements, "threads": float(n_threads)})
            results.setdefault(m.cell_id, []).append(r)

    for cell in cells:
        built: list[Member] = []
        epochs = exp.epochs_for(cell)
        try:
            scheduler = False
            for seed in run_seeds:
                case = _case(exp, cell, seed, device, data)
                with torch_state(seed):
                    recipe = _coerce_recipe(exp.fn(case), f"{exp.where}[{cell.id}]")
                    _check_model_kind(recipe.model, data, f"{exp.where}[{cell.id}]")
                    rng = torch.get_rng_state()
                scheduler = scheduler or recipe.scheduler is not None
                if recipe.metrics:
                    raise _OneByOne
                if not built and len(counts) > 1 and case.epochs_seen:
                    # (a recipe that never saw the epoch count cannot depend on it)
                    other = most if epochs != most else min(counts)
                    why_bound = _epoch_bound(exp, cell, seed, device, data, other)
                    if why_bound is not None:
                        bound[cell.id] = why_bound
                built.append(Member(cell.id, seed, recipe.model, recipe.optimizer, recipe.loss,
                                    epochs=epochs, epoch_bound=cell.id in bound,
                                    scheduler=recipe.scheduler is not None, rng_state=rng))
        except _OneByOne:
            broken[cell.id] = "its recipe has custom metrics"
            continue
        except Exception:
            # That cell's own run (one by one) reports the error with its traceback; the
            # others still stack.
            broken[cell.id] = "building its recipe raised (its own run reports the error)"
            continue
        if scheduler:
            why_by_cell[cell.id] = "a learning-rate scheduler is not stacked"
            continue
        members += built
        owner += [cell] * len(built)
        if built and (size := max(_weights(m.model) for m in built)) > widest:
            # sized from the widest member so far (a padded stack costs each member what
            # its widest costs): a narrow first cell must not let wide ones overrun a chunk
            widest = size
            cap = min(cap or MAX_MEMBERS, chunk_size(built, exp.batch_size_for(cell) or 1,
                                                     data.x_val.shape[0], device))
            chunks[1] = max(chunks[1], math.ceil(len(cells) * len(run_seeds) / cap))
        if cap is not None and len(members) >= cap:
            train_buffered()
    train_buffered()
    out: dict[str, CellResult] = {}
    reasons: dict[str, str] = {}
    for cell in cells:  # complete when every seed trained, in whichever groups; else one by one
        runs = sorted(results.get(cell.id, []), key=lambda r: r.seed)
        if len(runs) == len(run_seeds):
            out[cell.id] = CellResult(experiment=exp.name, cell_id=cell.id,
                                      params=cell.as_dict(), device=device, seeds=tuple(runs))
        else:
            reasons[cell.id] = (broken.get(cell.id) or why_by_cell.get(cell.id)
                                or "not stacked")
    if groups is not None:
        # (the cells given here share a batch size: see stackable_cells)
        groups.extend(_describe(group, exp.batch_size_for(cells[0]), data.task, bound)
                      for group in trained)
    return out, reasons


def _weights(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _uses_vmap(m: Any, data: Data) -> bool:
    from hpspec.engine.stacked import signature

    sig = signature(m, data.task, False)
    return not isinstance(sig, str) and sig[0][0] == "func"


def _describe(group: list[Any], batch_size: int | None, task: str,
              bound: Mapping[str, str]) -> StackGroup:
    """A trained group as the summary tells it (see :func:`hpspec.plan.stacked_note`)."""
    from hpspec.engine.stacked import signature

    sig = signature(group[0], task, False)
    engine, opt, loss = (sig[:3] if not isinstance(sig, str) else (sig, "", ""))
    # only MLPs pad widths; any other engine's layer structure holds its shapes already
    padded = not isinstance(engine, str) and engine[0] == "mlp"
    shapes = [[tuple(p.shape) for p in m.model.parameters()] for m in group]
    widest = ([tuple(max(dims) for dims in zip(*column, strict=True))
               for column in zip(*shapes, strict=True)] if padded else [])
    cells = tuple(dict.fromkeys(m.cell_id for m in group))
    return StackGroup(batch_size=batch_size, members=len(group), cells=cells,
                      model=repr(engine), widths=repr(widest), optimizer=str(opt),
                      loss=str(loss), epochs=tuple(sorted({m.epochs for m in group})),
                      apart=tuple((c, bound[c]) for c in cells if c in bound))


_DIGESTS: dict[int, str] = {}


@functools.cache
def package_version(name: str) -> str:
    """An installed package's version, read once per process: ``importlib.metadata`` scans
    every distribution on the path per call (1.8 of 1.9 s of cache-key time over 1,024
    seeds when it was read per seed)."""
    from importlib.metadata import version

    return version(name)


def data_digest(spec: DataSpec) -> str:
    """What identifies a data set in cache keys: a bundled set's name and options, or a
    digest of the bytes of user-supplied tensors."""
    if spec.preloaded is None:
        return f"{spec.key} scikit-learn={package_version('scikit-learn')}"
    found = _DIGESTS.get(id(spec.preloaded))
    if found is None:
        import hashlib

        h = hashlib.sha256()
        d = spec.preloaded
        for t in (d.x_train, d.y_train, d.x_val, d.y_val):
            h.update(str((tuple(t.shape), t.dtype)).encode())
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        found = _DIGESTS[id(spec.preloaded)] = h.hexdigest()[:24]
    return found
