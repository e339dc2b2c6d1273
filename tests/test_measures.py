"""The measurement registry is the one list: every front-end's names come from it."""

from __future__ import annotations

import ast
from pathlib import Path

import hpspec as hp
from hpspec import gate, measures, plan, report
from hpspec.measures import BY_NAME, REGISTRY

PKG = Path(measures.__file__).parent


def test_front_ends_name_only_registered_measurements():
    names = set(BY_NAME)
    assert {c.name for c in report.MEASURE_COLUMNS} <= names
    assert set(report.SHORT_COLUMNS[1:]) <= names
    assert set(gate.ALIASES.values()) <= names
    assert gate.TIMING <= names
    assert plan.TIMING_MEASURES <= names
    for helper in (hp.throughput(), hp.epoch_time(), hp.peak_memory()):
        m = BY_NAME[helper.name]
        assert (helper.label, helper.unit) == (m.label, m.unit)
    for name in measures.CLAIMABLE:
        assert hp.measure(name).label == BY_NAME[name].label
    # The HTML legend is the table's: every measurement column's legend is the registry's.
    for c in report.MEASURE_COLUMNS:
        assert c.legend == BY_NAME[c.name].legend and c.header == BY_NAME[c.name].header
    # The --hpspec-columns help is built from measures.COLUMNS, the table from the same.
    assert [m.name for m in measures.COLUMNS] == [c.name for c in report.MEASURE_COLUMNS]


def test_the_gate_aliases_and_claim_helpers_agree():
    assert gate.parse_limits("throughput:-10%")[0].metric == hp.throughput().name
    assert gate.parse_limits("memory:+0")[0].metric == hp.peak_memory().name
    assert gate.parse_limits("epoch_time:+0")[0].metric == hp.epoch_time().name
    # The gate's names work in claims too (Measure's == builds a claim: compare the fields).
    by_alias, helper = hp.measure("throughput"), hp.throughput()
    assert (by_alias.name, by_alias.label, by_alias.unit) == (
        helper.name, helper.label, helper.unit) == ("samples_per_s", "samples/s", "")
    # A name measure() does not take keeps itself as label, and validation refuses it.
    assert hp.measure("inference_macs").label == "inference_macs"


def _constants(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    # __all__ lists function names (claims exports peak_memory()), not measurements.
    exported = {id(n) for a in ast.walk(tree) if isinstance(a, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in a.targets)
                for n in ast.walk(a.value)}
    return {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)
            and isinstance(n.value, str) and id(n) not in exported}


def test_no_second_list_of_measurement_names_outside_the_registry():
    # The modules that used to keep their own lists now read measures.py; a literal name
    # there would be a list growing apart again.
    for module in ("report", "gate", "html", "claims", "cli", "plan", "options", "results"):
        # "params" is also a cell's hyperparameters in every serialised cell.
        found = _constants(PKG / f"{module}.py") & (set(BY_NAME) - {"params"})
        assert not found, f"hpspec/{module}.py names {sorted(found)}: read hpspec.measures"


def test_every_measurement_the_engines_write_is_registered():
    # Dict literals and subscript stores into a measurements dict, in the training code.
    written: set[str] = set()
    for path in (PKG / "engine").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys
                        if isinstance(k, ast.Constant) and isinstance(k.value, str)}
                if keys & set(BY_NAME):
                    written |= keys
            if (isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Subscript)
                    and isinstance(node.targets[0].value, ast.Name)
                    and node.targets[0].value.id in ("measurements", "out")
                    and isinstance(node.targets[0].slice, ast.Constant)):
                written.add(node.targets[0].slice.value)
    assert {"samples_per_s", "peak_memory", "stacked", "params"} <= written
    unknown = {n for n in written if not measures.is_measurement(n)}
    assert not unknown, f"the engine writes {sorted(unknown)}: add them to hpspec/measures.py"


def test_registry_entries_are_consistent():
    assert len(BY_NAME) == len(REGISTRY)
    for m in REGISTRY:
        assert m.format in measures.FORMATTERS
        assert (m.header is None) == (not m.legend), m.name
        assert not m.times_training or m.timing, m.name  # training time depends on the machine
    assert measures.get("throughput") is BY_NAME["samples_per_s"]
    assert measures.is_probed("inference_latency_b32") and not measures.is_probed("mfu")
