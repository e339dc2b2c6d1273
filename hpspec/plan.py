"""Pure decisions about how to train an experiment: may its cells be stacked, and may a seed
stop before its last epoch. No torch; the runner and the plugin ask, the tests check.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.claims import CellClaim, Measure, Reaches
from hpspec.measures import TIMES_TRAINING
from hpspec.spec import Experiment

__all__ = ["TIMING_MEASURES", "timing_claim", "stop_rule", "StackGroup", "stacked_note"]

#: Measurements that time the training: stacking cells would change what they mean.
TIMING_MEASURES = TIMES_TRAINING


def _walk(obj: Any) -> Any:
    yield obj
    if attrs.has(type(obj)):
        for f in attrs.fields(type(obj)):
            yield from _walk(getattr(obj, f.name))
    elif isinstance(obj, (list, tuple)):
        for x in obj:
            yield from _walk(x)


def timing_claim(exp: Experiment) -> str | None:
    """The first claim of ``exp`` about training time or speed, described; None if none.
    Such an experiment trains its cells one by one, so each cell's timing is its own."""
    for claim in exp.claims:
        for node in _walk(claim):
            if isinstance(node, Measure) and node.name in TIMING_MEASURES:
                return claim.describe()
            if isinstance(node, Reaches) and node.seconds is not None:
                return claim.describe()
    return None


StopRule = Callable[[Mapping[str, Sequence[float]]], bool]


def stop_after(own: StopRule | None, stop_at: int | None) -> StopRule | None:
    """``own`` (a cell's :func:`stop_rule`), and for a halving rung also a stop once
    ``stop_at`` epochs are trained (None: no rung, ``own`` alone)."""
    if stop_at is None:
        return own
    return lambda curves: (len(curves.get("train_loss", ())) >= stop_at
                           or (own is not None and own(curves)))


def stop_rule(exp: Experiment, params: Mapping[str, Any], full_curves: bool) -> StopRule | None:
    """When every claim that looks at this cell is a "reaches ... within N epochs" claim, a
    seed may stop as soon as all of them are decided: the target reached (by epoch N), or
    epoch N passed without it. Any other claim (final values, means, trends, comparisons...)
    needs the whole curve, and so does ``--hpspec-full-curves``. A search's trials never stop
    early: halving ranks them, and Optuna is told, on their curves at every rung, so a trial
    cut short by its decided claims would score worse than it is (the cache key's
    ``stops_early`` asks this rule too, so it stays consistent)."""
    if full_curves or exp.search is not None:
        return None
    targets: list[Reaches] = []
    for claim in exp.claims:
        if not isinstance(claim, CellClaim):
            if getattr(claim, "selects", None) and claim.selects(params):
                return None
            continue
        if not claim.applies_to(params):
            continue
        cond = claim.condition
        if (not isinstance(cond, Reaches) or cond.epochs is None or claim.at_least is not None
                or claim.confidence is not None):
            return None
        targets.append(cond)
    if not targets:
        return None

    def decided(curves: Mapping[str, Sequence[float]]) -> bool:
        for t in targets:
            curve = curves.get(t.metric) or ()
            hit = any(t._hit(v) for v in curve[: t.epochs])
            if not hit and len(curve) < t.epochs:  # type: ignore[operator]
                return False
        return True

    decided.targets = tuple(sorted(t.describe() for t in targets))  # type: ignore[attr-defined]
    return decided


@attrs.frozen
class StackGroup:
    """One stacked group as the summary tells it: what its members share, in words that
    only need to compare equal (two groups that differ in ``model`` differ in layers)."""

    batch_size: int | None
    members: int
    #: the cells whose seeds trained in it, in order
    cells: tuple[str, ...]
    #: the layer structure (widths aside, for MLPs: they pad where that pays)
    model: str = ""
    #: the widest member's parameter shapes
    widths: str = ""
    optimizer: str = ""
    loss: str = ""
    #: the epoch counts that shared the run (each member reads its own prefix)
    epochs: tuple[int, ...] = ()
    #: cells whose recipe depends on ``case.epochs`` (so they share runs only with their own
    #: epoch count), each with how its recipe differed
    apart: tuple[tuple[str, str], ...] = ()


#: What keeps stacked groups apart, in the summary's words, by :class:`StackGroup` field.
_APART = (("batch_size", "batch size"), ("model", "layer structure"),
          ("widths", "width (padding would not pay)"), ("optimizer", "optimizer"),
          ("loss", "loss"), ("apart", "a recipe that reads case.epochs"))


def _count(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def stacked_note(groups: Sequence[StackGroup], alone: Mapping[str, str],
                 rungs: bool = False) -> str:
    """The summary's one line on stacking for an experiment, over every bucket: how many
    cells trained stacked, in how many groups of what size, what kept the groups apart,
    which epoch counts shared a run, and why any cell trained alone (one by one).

    ``alone`` maps each cell that was offered to stacking but trained one by one to why.
    ``rungs``: the groups are a halving search's, one set per rung (a survivor trains again at
    each), so alike groups are rungs, not the size limit."""
    stacked: dict[str, None] = {}
    for g in groups:
        stacked.update(dict.fromkeys(c for c in g.cells if c not in alone))
    total = len(stacked) + len(alone)
    parts = [f"stacked: {len(stacked)} of {_count(total, 'cell')}" if alone
             else f"stacked: {_count(len(stacked), 'cell')}"]
    if groups:
        sizes = sorted({g.members for g in groups}, reverse=True)
        parts[0] += (f" in {_count(len(groups), 'group')} of "
                     f"{', '.join(map(str, sizes))} (cells x seeds as one model)"
                     + (" over the halving rungs" if rungs else ""))
        # widths count only between groups alike in everything else (a deeper model's
        # shapes differ anyway)
        rest = [name for name, _ in _APART if name != "widths"]
        alike: dict[tuple[Any, ...], set[str]] = {}
        for g in groups:
            alike.setdefault(tuple(getattr(g, n) for n in rest), set()).add(g.widths)
        differ = [words for name, words in _APART
                  if (any(len(w) > 1 for w in alike.values()) if name == "widths"
                      else len({getattr(g, name) for g in groups}) > 1)]
        kinds = {tuple(getattr(g, name) for name, _ in _APART) for g in groups}
        if len(kinds) < len(groups) and not rungs:
            differ.append("the size limit (memory, work per step)")
        if differ:
            parts.append("groups apart by " + (" and ".join(differ) if len(differ) < 3 else
                                               ", ".join(differ[:-1]) + " and " + differ[-1]))
        shared = sorted({e for g in groups if len(g.epochs) > 1 for e in g.epochs})
        if shared:
            parts.append(f"epoch counts {', '.join(map(str, shared))} shared a run (each cell "
                         "reads its own prefix)")
        apart = dict(a for g in groups for a in g.apart)
        if apart:
            cid, why = next(iter(apart.items()))
            more = f" and {len(apart) - 1} more" if len(apart) > 1 else ""
            parts.append(f"{cid}{more} trained apart from other epoch counts: its recipe "
                         f"depends on case.epochs ({why})")
    by_reason: dict[str, list[str]] = {}
    for cid, why in alone.items():
        by_reason.setdefault(why, []).append(cid)
    for why, cids in sorted(by_reason.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        example = cids[0] if len(cids) == 1 else f"e.g. {cids[0]}"
        if len(cids) > 1:  # the reasons speak of one cell: "its recipe", "its model"
            why = re.sub(r"\bits\b", "their", why)
        parts.append(f"{_count(len(cids), 'cell')} trained alone, one by one, because {why} "
                     f"({example})")
    if stacked:
        parts.append("a stacked cell's samples/s is its samples over its group's time; "
                     "--hpspec-stack=off trains every cell one by one")
    return "; ".join(parts)
