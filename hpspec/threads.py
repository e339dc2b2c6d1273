"""How many intra-op threads torch uses for a run: the rule, with no torch in it.

On a CPU shared with other processes, torch's default (one intra-op thread per core) made a
small model's training 10 to 30 times slower than one thread: each tiny matrix product waits
for a second thread that another process holds. A small model gains nothing from a second
thread even on a quiet machine. So, for ``--hpspec-threads=auto`` (the default):

* on a CPU, a run whose model has ``parameters x batch_size`` below :data:`SMALL_WORK`
  (about the multiply-adds of one forward step of an MLP) trains on **one** thread;
* anything larger, and any run on CUDA or MPS, keeps torch's own setting.

For a stacked group the rule looks at one member (the largest), so a cell gets the same
count whether it trains stacked or alone. ``--hpspec-threads=N`` uses N threads for every run
on the CPU. The count a run used is recorded in its measurements (``threads``); the setting
and torch's default count are part of the cache key.
"""

from __future__ import annotations

from typing import Union

__all__ = ["SMALL_WORK", "Threads", "parse_threads", "choose_threads", "threads_key"]

#: parameters x batch size under which a CPU run takes one thread (2**23, about 8.4 million:
#: the digits MLP 64-128-128-10 at batch 64 is 1.7 million, at batch 256 6.7 million).
SMALL_WORK = 2**23

Threads = Union[str, int]  # "auto" or a positive count


def parse_threads(value: object) -> Threads:
    """``auto`` or a positive integer; anything else raises ValueError naming the fix."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    try:
        n = int(text)
    except ValueError:
        n = 0
    if n < 1 or str(n) != text:
        raise ValueError(f"--hpspec-threads={value!r} must be auto or a positive whole number "
                         "of threads, e.g. --hpspec-threads=1")
    return n


def choose_threads(setting: Threads, device: str, work: float | None,
                   current: int) -> int:
    """The intra-op thread count for one run (see the module's docstring for the rule).

    ``work`` is parameters x batch size of the (largest) model, None when unknown;
    ``current`` is torch's count before the run, kept when the rule says nothing.
    """
    if not device.startswith("cpu"):
        return current
    if setting != "auto":
        return int(setting)
    if work is not None and work < SMALL_WORK:
        return 1
    return current


def threads_key(setting: Threads, current: int) -> str:
    """The thread part of a cache key: the setting, and for ``auto`` the count it starts from
    (with the model, which the rest of the key fixes, that decides the count)."""
    return f"auto/{current}" if setting == "auto" else str(int(setting))
