"""The words hpspec's modules pass between them, as ``Literal`` types: a mistyped outcome or
mode is then a type error (mypy) rather than a comparison that is quietly never true.

Pure and import-free beyond ``typing``; the tuples of allowed values (what an option's parser
accepts) are read off the types, so a choice cannot be added to one and not the other.
"""

from __future__ import annotations

from typing import Literal, get_args

__all__ = ["Outcome", "CellOutcome", "Mode", "Direction", "CacheMode", "TableStyle",
           "InconclusiveAs", "HolmScope", "OUTCOMES", "MODES", "DIRECTIONS", "CACHE_MODES",
           "TABLE_STYLES", "INCONCLUSIVE_AS", "HOLM_SCOPES"]

#: A claim's verdict.
Outcome = Literal["pass", "fail", "inconclusive"]
#: A cell's pytest outcome as the summary shows it.
#: ("for claims": not selected itself, trained because a claim on other cells needed it;
#: "pruned": a search trial halving pruned, its claims not judged on the cut curve.)
CellOutcome = Literal["passed", "FAILED", "inconclusive", "error", "not run", "for claims",
                      "crashed", "pruned"]
#: Recipe mode: hpspec owns the loop; loop mode: a generator yields metrics per epoch.
Mode = Literal["recipe", "loop"]
#: Which way a metric must cross its target.
Direction = Literal["below", "above"]
#: --hpspec-cache: use stored seeds, train again and overwrite them, or neither read nor write.
CacheMode = Literal["use", "refresh", "off"]
#: --hpspec-table.
TableStyle = Literal["full", "short", "none"]
#: --hpspec-inconclusive: what pytest makes of an inconclusive verdict.
InconclusiveAs = Literal["fail", "skip", "xfail"]
#: --hpspec-holm: the family a Holm correction runs over.
HolmScope = Literal["off", "experiment", "run"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
MODES: tuple[Mode, ...] = get_args(Mode)
DIRECTIONS: tuple[Direction, ...] = get_args(Direction)
CACHE_MODES: tuple[CacheMode, ...] = get_args(CacheMode)
TABLE_STYLES: tuple[TableStyle, ...] = get_args(TableStyle)
INCONCLUSIVE_AS: tuple[InconclusiveAs, ...] = get_args(InconclusiveAs)
HOLM_SCOPES: tuple[HolmScope, ...] = get_args(HolmScope)
