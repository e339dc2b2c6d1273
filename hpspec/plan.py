"""Pure decisions about how to train an experiment: may its cells be stacked, and may a seed
stop before its last epoch. No torch; the runner and the plugin ask, the tests check.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.claims import CellClaim, Measure, Reaches
from hpspec.measures import TIMES_TRAINING
from hpspec.spec import Experiment

__all__ = ["TIMING_MEASURES", "timing_claim", "stop_rule"]

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


def stop_rule(exp: Experiment, params: Mapping[str, Any], full_curves: bool) -> StopRule | None:
    """When every claim that looks at this cell is a "reaches ... within N epochs" claim, a
    seed may stop as soon as all of them are decided: the target reached (by epoch N), or
    epoch N passed without it. Any other claim (final values, means, trends, comparisons...)
    needs the whole curve, and so does ``--hpspec-full-curves``."""
    if full_curves:
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


def stacked_note(groups: Mapping[str, int]) -> str:
    """The summary's line on stacked training, over every bucket of an experiment: ``groups``
    maps each stacked cell to its group's size (cells x seeds trained as one model)."""
    sizes = sorted(set(groups.values()))
    return (f"stacked: {len(groups)} cell(s) trained in groups of "
            f"{', '.join(map(str, sizes))} (cells x seeds as one model); their "
            "samples/s is each cell's samples over the group's time; "
            "--hpspec-stack=off trains them one by one")
