"""A watchdog that holds a cell's time budget whatever the user's code does.

The runner checks the budget between steps, which misses code that blocks inside one step (a
generator that sleeps in its first epoch, a recipe function or a forward that waits). The
watchdog interrupts such code from outside:

- on the main thread of a POSIX process (plain pytest, each xdist worker): ``SIGALRM`` from
  ``setitimer``; its handler raises in the main thread at the next bytecode, which also ends
  ``time.sleep`` and any other call that returns to Python on a signal;
- on any other thread (a Ray actor's task thread, say), or when another alarm is already set
  (pytest-timeout's signal method): a timer thread that raises in the cell's thread with
  ``PyThreadState_SetAsyncExc``; this lands only when that thread runs Python again.

The alarm never lands while the block is already on its way out: when it comes while an
exception is being handled (the block is unwinding, say from the runner's own between-steps
budget check) or inside the guard's exit, it is put off by :data:`RETRY` seconds, for at most
:data:`GRACE` seconds past the budget, so that the exception already under way (or the guard's
own verdict) is the one the caller sees, not a stray alarm from outside the guard.

The limit, documented in the README: code that never returns to the interpreter (one long C
or CUDA call) cannot be interrupted by either way; the cell then fails when it does return,
and its message says by how much the budget was passed. The alarm raises a ``BaseException``
so that a user's ``except Exception:`` cannot swallow it; :func:`watchdog` turns it into
:class:`~hpspec.errors.BudgetExceeded` at its own boundary.

Pure: imports neither torch nor pytest.
"""

from __future__ import annotations

import contextlib
import ctypes
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["BudgetAlarm", "watchdog", "FAR_PAST"]

#: Past the budget by more than this (seconds, or this share of the budget, whichever is
#: more), a late stop says that the code could not be interrupted sooner.
FAR_PAST = 2.0

#: An alarm that comes while the block is unwinding is put off by this many seconds...
RETRY = 0.01
#: ...for at most this many seconds past the budget; then it lands all the same (code that
#: sleeps inside an ``except`` clause is still interrupted).
GRACE = 0.5


class BudgetAlarm(BaseException):
    """Raised inside the cell's code when its budget runs out (a BaseException so that the
    user's ``except Exception`` does not swallow it)."""


def _async_raise(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(BudgetAlarm))


def _handling(thread_id: int) -> bool:
    """Whether thread ``thread_id`` is handling an exception (unwinding, or in an except)."""
    if thread_id == threading.get_ident():
        return sys.exc_info()[1] is not None
    current = getattr(sys, "_current_exceptions", None)
    if current is None:
        return False
    value = current().get(thread_id)
    if isinstance(value, tuple):  # Python < 3.12: (type, value, traceback)
        value = value[1]
    return value is not None


def put_off(frame: object, thread_id: int, now: float, at: float) -> bool:
    """Whether an alarm for thread ``thread_id``, due at ``at``, that comes at ``now`` while
    ``frame`` runs (None: not known) waits :data:`RETRY` seconds more: the thread is handling
    an exception, or is in the guard's own exit (contextlib's ``__exit__``, or the guard's
    generator in its ``finally``), where a raised alarm would escape the guard; never later
    than :data:`GRACE` seconds past ``at``."""
    if now >= at + GRACE:
        return False
    code = getattr(frame, "f_code", None)
    return code is _EXIT_CODE or code is _GUARD_CODE or _handling(thread_id)


@contextlib.contextmanager
def watchdog(at: float | None, on_exceeded: Callable[[float], BaseException],
             clock: Callable[[], float] = time.perf_counter) -> Iterator[None]:
    """Run the block until ``at`` (a ``clock()`` time; None: no budget). When it is still
    running then, it is interrupted, and ``on_exceeded(seconds_late)`` is raised instead."""
    if at is None:
        yield
        return
    fired = threading.Event()
    remaining = at - clock()
    if remaining <= 0:
        raise on_exceeded(-remaining)
    use_signal = (threading.current_thread() is threading.main_thread()
                  and hasattr(signal, "setitimer")
                  and signal.getitimer(signal.ITIMER_REAL)[0] == 0.0)
    armed = [True]  # cleared first thing on the way out: a late alarm then does nothing
    previous = None
    stop = threading.Event()
    ident = threading.get_ident()
    if use_signal:
        def on_alarm(signum: int, frame: object) -> None:
            if not armed[0]:
                return
            if put_off(frame, ident, clock(), at):
                signal.setitimer(signal.ITIMER_REAL, RETRY)  # on its way out: ask again
                return
            fired.set()
            raise BudgetAlarm()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, remaining)
    else:
        lock = threading.Lock()

        def watch() -> None:
            if stop.wait(remaining):
                return
            while True:
                with lock:
                    if not armed[0]:
                        return
                    if not put_off(None, ident, clock(), at):
                        fired.set()
                        _async_raise(ident)
                        return
                if stop.wait(RETRY):
                    return

        threading.Thread(target=watch, name="hpspec-watchdog", daemon=True).start()
    try:
        try:
            yield
        finally:
            if use_signal:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            else:
                with lock:
                    armed[0] = False
                stop.set()
    except BudgetAlarm:
        raise on_exceeded(max(0.0, clock() - at)) from None
    if fired.is_set() or clock() > at:
        # The alarm fired after the block's last line, or the block swallowed it (a bare
        # except): the budget was passed all the same.
        if not use_signal and fired.is_set():
            # An async exception still pending would land at some later line: drop it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        raise on_exceeded(max(0.0, clock() - at))


_EXIT_CODE = contextlib._GeneratorContextManager.__exit__.__code__
_GUARD_CODE = watchdog.__wrapped__.__code__  # type: ignore[attr-defined]
