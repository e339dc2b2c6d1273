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
import threading
import time
from collections.abc import Callable, Iterator

__all__ = ["BudgetAlarm", "watchdog", "FAR_PAST"]

#: Past the budget by more than this (seconds, or this share of the budget, whichever is
#: more), a late stop says that the code could not be interrupted sooner.
FAR_PAST = 2.0


class BudgetAlarm(BaseException):
    """Raised inside the cell's code when its budget runs out (a BaseException so that the
    user's ``except Exception`` does not swallow it)."""


def _async_raise(thread_id: int) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(BudgetAlarm))


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
    timer: threading.Timer | None = None
    ident = threading.get_ident()
    if use_signal:
        def on_alarm(signum: int, frame: object) -> None:
            if armed[0]:
                fired.set()
                raise BudgetAlarm()

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, remaining)
    else:
        lock = threading.Lock()

        def fire() -> None:
            with lock:
                if armed[0]:
                    fired.set()
                    _async_raise(ident)

        timer = threading.Timer(remaining, fire)
        timer.daemon = True
        timer.start()
    try:
        try:
            yield
        finally:
            if use_signal:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, previous)
            elif timer is not None:
                with lock:
                    armed[0] = False
                timer.cancel()
    except BudgetAlarm:
        raise on_exceeded(max(0.0, clock() - at)) from None
    if fired.is_set() or clock() > at:
        # The alarm fired after the block's last line, or the block swallowed it (a bare
        # except): the budget was passed all the same.
        if not use_signal and fired.is_set():
            # An async exception still pending would land at some later line: drop it.
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), None)
        raise on_exceeded(max(0.0, clock() - at))
