"""Keep ``torch._dynamo`` out of a run that never compiles.

Several of torch's own functions are wrapped with ``torch._disable_dynamo`` (the optimizer's
``add_param_group``, ``zero_grad``, ``state_dict``...), so that the compiler never traces into
them. The wrapper imports ``torch._dynamo`` on its first call to build the "disabled" version:
building any ``torch.optim`` optimizer pulls in the compiler and with it sympy (about 1.3 s of
a small run on a quiet 2-core CPU, and more again at interpreter exit), although the run never
compiles anything.

:func:`compiler_import_deferred` lets a block call those functions as they are, without the
wrapper's import, by filling the wrapper's own per-function cache (``fn.__dynamo_disable``)
with the plain function for the length of the block, and emptying it again afterwards, so a
later call outside the block (a user who compiles) builds the real disabled version exactly
as it would have. Outside a compiled frame the disabled version and the plain function do the
same thing; hpspec uses the block only where it builds a user's recipe and steps optimizers
itself (stacked training), never around a user's own loop. Where torch's wrapper does not look
as expected (another torch release), the block does nothing and torch imports its compiler as
usual: slower, never different.

:func:`optimizer_step` does the same for ``optimizer.step()``, whose grad-mode wrapper
(``_use_grad_for_differentiable``) imports ``torch._dynamo`` on every call to place two graph
breaks, which only mean something while compiling: it sets the grad mode as that wrapper
does and calls the step inside it, and otherwise calls ``step()`` as usual.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable, Iterator
from typing import Any

__all__ = ["compiler_import_deferred", "optimizer_step", "plain_step", "replaced_step",
           "step_hooks", "step_plainly", "wrapped_methods"]

_CACHE = "__dynamo_disable"  # the attribute torch._compile._disable_dynamo caches on fn


def _wrapper_code() -> Any:
    """The code object of torch's ``_disable_dynamo`` wrapper, or None if it is not there."""
    try:
        import torch

        return torch._disable_dynamo(lambda: None).__code__
    except Exception:  # another torch release: nothing to defer
        return None


def wrapped_methods(classes: tuple[type, ...]) -> list[Callable[..., Any]]:
    """The plain functions behind the ``_disable_dynamo`` wrappers among the classes'
    attributes (their ``__wrapped__``), each once."""
    code = _wrapper_code()
    if code is None:
        return []
    found: dict[int, Callable[..., Any]] = {}
    for cls in classes:
        for klass in cls.__mro__:
            for value in vars(klass).values():
                fn = getattr(value, "__wrapped__", None)
                if getattr(value, "__code__", None) is code and callable(fn):
                    found.setdefault(id(fn), fn)
    return list(found.values())


@functools.cache
def _step_codes() -> tuple[Any, Any] | None:
    """The code objects of the optimizer step's two wrappers (profiler hooks, grad mode)."""
    try:
        from torch.optim import Optimizer
        from torch.optim import optimizer as module

        hooks = Optimizer.profile_hook_step(lambda *a, **k: None).__code__
        grad = module._use_grad_for_differentiable(lambda *a, **k: None).__code__
        return hooks, grad
    except Exception:  # another torch release
        return None


def _plain_step(cls: type) -> Callable[..., Any] | None:
    """The optimizer class's own ``step`` under torch's wrappers, or None when the wrappers
    are not the two this module knows (then ``step()`` is called as it is)."""
    codes = _step_codes()
    fn: Any = getattr(cls, "step", None)
    if codes is None or fn is None:
        return None
    if getattr(fn, "__code__", None) is codes[0]:  # the profiler-and-hooks wrapper
        fn = getattr(fn, "__wrapped__", None)
    if getattr(fn, "__code__", None) is not codes[1]:  # the grad-mode wrapper
        return None
    inner = getattr(fn, "__wrapped__", None)
    return inner if callable(inner) else None


def optimizer_step(opt: Any) -> None:
    """``opt.step()``; without importing ``torch._dynamo`` when it is not imported yet and
    :func:`plain_step` finds the step under torch's wrappers."""
    inner = plain_step(opt) if "torch._dynamo" not in sys.modules else None
    if inner is None:
        opt.step()
    else:
        step_plainly(opt, inner)


def step_hooks(opt: Any) -> bool:
    """Step hooks that ``opt.step()`` would run: the optimizer's own
    (``register_step_pre_hook`` / ``register_step_post_hook``) or torch's global ones."""
    from torch.optim import optimizer as module

    return bool(getattr(module, "_global_optimizer_pre_hooks", None)
                or getattr(module, "_global_optimizer_post_hooks", None)
                or getattr(opt, "_optimizer_step_pre_hooks", None)
                or getattr(opt, "_optimizer_step_post_hooks", None))


def _scheduler_wrapper(opt: Any, fn: Any) -> bool:
    """``fn`` (set as ``opt.step`` on the instance) is the wrapper an LR scheduler of this torch
    release installs to note that the optimizer stepped: it sets ``opt._opt_called`` and calls
    the class's own ``step``, nothing else (its code is checked, not only its marker)."""
    code = getattr(fn, "__code__", None)
    return (getattr(fn, "_wrapped_by_lr_sched", False) is True
            and getattr(fn, "__wrapped__", None) is getattr(type(opt), "step", None)
            and code is not None and code.co_filename.replace("\\", "/").endswith(
                "torch/optim/lr_scheduler.py")
            and set(code.co_names) <= {"_opt_called", "__get__", "__class__"})


def replaced_step(opt: Any) -> bool:
    """``opt.step`` is set on the instance (``opt.step = ...``) to something other than an LR
    scheduler's own wrapper: ``opt.step()`` runs the user's code, not only the class's step."""
    fn = vars(opt).get("step") if hasattr(opt, "__dict__") else None
    return fn is not None and not _scheduler_wrapper(opt, fn)


def plain_step(opt: Any) -> Callable[..., Any] | None:
    """The step of one of torch's optimizers under its two wrappers, or None where calling it
    directly would change something: step hooks registered, a ``step`` replaced on the
    instance (an LR scheduler's wrapper is recognised, and what it does is done: see
    :func:`step_plainly`), or wrappers this module does not know."""
    import torch

    if (not isinstance(opt, torch.optim.Optimizer) or step_hooks(opt)
            or replaced_step(opt)):
        return None
    return _plain_step(type(opt))


def step_plainly(opt: Any, inner: Callable[..., Any]) -> None:
    """What the two wrappers do around ``inner`` (see :func:`plain_step`), less the graph
    breaks: a profiler range named as torch names it, and the grad mode the step needs."""
    import torch

    if "step" in vars(opt):  # an LR scheduler's wrapper (plain_step): what it does
        opt._opt_called = True
    before = torch.is_grad_enabled()
    try:
        with torch.autograd.profiler.record_function(
                f"Optimizer.step#{type(opt).__name__}.step"):
            torch.set_grad_enabled(bool(opt.defaults.get("differentiable", False)))
            inner(opt)
    finally:
        torch.set_grad_enabled(before)


@functools.cache
def _deferred_functions() -> tuple[Callable[..., Any], ...]:
    """The functions behind the ``_disable_dynamo`` wrappers of torch's optimizers and of
    hpspec's probes (torch wraps a dispatch mode's ``__torch_dispatch__`` the same way):
    fixed once the classes exist, so found once, not at every run (walking the classes cost
    about 0.3 ms a run)."""
    import torch

    from hpspec.engine.probes import FlopCount, LiveMemory

    opt = torch.optim
    names = [n for n in getattr(opt, "__all__", dir(opt)) if not n.startswith("_")]
    classes = [getattr(opt, n) for n in names]
    return tuple(wrapped_methods(
        (*(c for c in classes if isinstance(c, type) and issubclass(c, opt.Optimizer)),
         LiveMemory, FlopCount)))


@contextlib.contextmanager
def compiler_import_deferred() -> Iterator[None]:
    """Run the block with the ``_disable_dynamo`` wrappers of torch's optimizers and hpspec's
    probes calling their functions directly, unless ``torch._dynamo`` is imported already
    (then nothing changes).
    """
    if "torch._dynamo" in sys.modules:
        yield
        return
    filled: list[Callable[..., Any]] = []
    try:
        for fn in _deferred_functions():
            if getattr(fn, _CACHE, None) is None:
                setattr(fn, _CACHE, fn)
                filled.append(fn)
        yield
    finally:
        for fn in filled:
            if getattr(fn, _CACHE, None) is fn:
                delattr(fn, _CACHE)
