"""One serialiser per payload: Verdict, the xdist payloads and the Ray job and answer
round-trip through JSON unchanged; no module reaches for another's private names."""

from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import hpspec
from hpspec.claims import Effect, SeedCheck, Verdict
from hpspec.distributed import (
    CellPayload,
    ClaimPayload,
    ExpInfo,
    cell_payload,
    claim_payload,
    read_payload,
)
from hpspec.ray_backend import RayAnswer, RayJob
from hpspec.report import CellRecord, run_document
from hpspec.results import CellResult, Divergence, SeedResult

VERDICT = Verdict(
    "val_loss < 0.5", "fail", "claim: ...\nneeded ...",
    (SeedCheck(0, True, 0.25), SeedCheck(1, False, math.nan, "diverged")),
    p_pass=0.2, p_fail=0.01, points=2.0, target=("val_loss", "<", 0.5),
    effect=Effect(0.1, -math.inf, 0.3, 0.95, None))
RESULT = CellResult("exp", "lr=0.1", {"lr": 0.1}, "cpu", (
    SeedResult(0, {"val_loss": [1.0, 0.5]}, [0.1, 0.1], measurements={"samples_per_s": 9.0}),
    SeedResult(1, {"val_loss": [1.0, math.inf]}, diverged=Divergence(2, 7, "inf loss"))))


def _same(a: Verdict, b: Verdict) -> bool:
    # NaN != NaN: compare the JSON forms, which keep NaN as text.
    return json.dumps(a.to_dict()) == json.dumps(b.to_dict()) and a.checks[0] == b.checks[0]


def test_verdict_round_trips_through_json():
    text = json.dumps(VERDICT.to_dict(), allow_nan=False)
    back = Verdict.from_dict(json.loads(text))
    assert _same(back, VERDICT)
    assert math.isnan(back.checks[1].value) and back.checks[1].note == "diverged"
    assert back.effect is not None and back.effect.low == -math.inf
    assert back.target == ("val_loss", "<", 0.5) and back.outcome == "fail"


def test_the_json_document_writes_verdicts_with_their_serialiser():
    rec = CellRecord("exp", "lr=0.1", {"lr": 0.1}, "passed", RESULT, [VERDICT])
    doc = run_document([("k", "exp", ["lr"], [rec], [VERDICT])], {})
    cell = doc["experiments"][0]["cells"][0]
    assert cell["verdicts"] == [VERDICT.to_dict()] == doc["experiments"][0]["claims"]
    assert cell["verdicts"][0]["target"] == {"metric": "val_loss", "op": "<", "value": 0.5}
    assert cell["verdicts"][0]["seeds"][1]["value"] == "nan"


def test_xdist_payloads_round_trip():
    info = ExpInfo("exp", ("lr",))
    rec = CellRecord("exp", "lr=nan", {"lr": math.nan, "act": "relu"}, "passed", RESULT,
                     [VERDICT], "cached", 3)
    got = read_payload(cell_payload("k", info, rec, ["a note"]))
    assert isinstance(got, CellPayload)
    assert (got.key, got.info, got.cell_id, got.outcome, got.note, got.order, got.notes) == (
        "k", info, "lr=nan", "passed", "cached", 3, ("a note",))
    assert math.isnan(got.params["lr"]) and got.params["act"] == "relu"
    assert got.result is not None and got.result.to_dict() == RESULT.to_dict()
    assert _same(got.verdicts[0], VERDICT)

    claim = read_payload(claim_payload("k", info, "compare-1", None, {"lr=0.1": RESULT}))
    assert isinstance(claim, ClaimPayload) and claim.verdict is None
    assert claim.results["lr=0.1"].to_dict() == RESULT.to_dict()
    claim = read_payload(claim_payload("k", info, "compare-1", VERDICT))
    assert isinstance(claim, ClaimPayload) and _same(claim.verdict, VERDICT)


def test_ray_job_and_answer_round_trip():
    job = RayJob("/a/exp_x.py", "exp_x.py", "fn", ("lr=1", "lr=2"), (0, 1), "auto",
                 {"stack": True})
    assert RayJob.from_dict(json.loads(json.dumps(job.to_dict()))) == job
    answer = RayAnswer({"lr=0.1": RESULT}, {"lr=2": "boom"}, ("stacked on Ray",))
    back = RayAnswer.from_dict(json.loads(json.dumps(answer.to_dict())))
    assert back.errors == {"lr=2": "boom"} and back.notes == ("stacked on Ray",)
    assert back.results["lr=0.1"].to_dict() == RESULT.to_dict()


def test_no_module_imports_another_modules_private_name():
    found = []
    for path in Path(hpspec.__file__).parent.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hpspec"):
                found += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                          if a.name.startswith("_") and not a.name.startswith("__")]
            if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                    and node.value.id in ("Store", "claims", "report", "session", "spec")
                    and node.attr.startswith("_") and not node.attr.startswith("__")):
                found.append(f"{path.name}: {node.value.id}.{node.attr}")
    assert not found, found
