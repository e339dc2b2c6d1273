from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

NOISY = """
import random
import hpspec as hp

MEANS = {"a": 1.0, "b": 2.0, "c": 1.05}

@hp.experiment(
    grid=hp.grid(arm=["a", "b", "c"]),
    epochs=1,
    seeds=4,
    claims=[
        hp.compare(hp.metric("loss").final(), lower={"arm": "a"}, than={"arm": "b"}),
        hp.compare(hp.metric("loss").final(), lower={"arm": "a"}, than={"arm": "c"},
                   name="a-vs-c"),
    ],
)
def arms(case):
    rng = random.Random(case.seed)
    yield {"loss": MEANS[case.arm] + rng.gauss(0, 0.3)}
"""


def test_cross_claims_are_items_after_their_cells(pytester):
    pytester.makepyfile(exp_arms=NOISY)
    result = pytester.runpytest("--collect-only", "-q")
    result.stdout.fnmatch_lines([
        "exp_arms.py::arms[[]arm=a[]]",
        "exp_arms.py::arms[[]arm=b[]]",
        "exp_arms.py::arms[[]arm=c[]]",
        "exp_arms.py::arms[[]compare-loss_final-arm=a-lower-than-arm=b[]]",
        "exp_arms.py::arms[[]a-vs-c[]]",
    ])


def test_decided_and_inconclusive_claims(pytester):
    pytester.makepyfile(exp_arms=NOISY)
    result = pytester.runpytest()
    result.assert_outcomes(passed=4, failed=1)
    result.stdout.fnmatch_lines([
        "*claim: loss final is lower for arm=a than for arm=c (Welch's t-test, 95% confidence)*",
        "*undecided at 4 seeds; roughly * seeds per cell would decide*",
        "claim across cells*verdict*p",
        "loss final is lower for arm=a than for arm=b*pass*",
        "loss final is lower for arm=a than for arm=c*inconclusive*",
    ])


@pytest.mark.parametrize("mode, outcome", [("skip", "skipped"), ("xfail", "xfailed")])
def test_inconclusive_can_skip_or_xfail(pytester, mode, outcome):
    pytester.makepyfile(exp_arms=NOISY)
    result = pytester.runpytest(f"--hpspec-inconclusive={mode}")
    result.assert_outcomes(passed=4, **{outcome: 1})


def test_selected_alone_a_claim_trains_the_cells_it_needs(pytester):
    pytester.makepyfile(exp_arms=NOISY)
    result = pytester.runpytest("-k", "lower-than-arm", "-v")
    result.assert_outcomes(passed=1, deselected=4)
    result.stdout.fnmatch_lines(["arm*verdict*", "a*for claims*", "b*for claims*"])
    assert "\nc " not in result.stdout.str()


def test_a_failed_cell_makes_its_claims_errors_that_name_it(pytester):
    pytester.makepyfile(exp_broken=NOISY.replace(
        "    rng = random.Random(case.seed)",
        "    rng = random.Random(case.seed)\n    if case.arm == 'b':\n"
        "        raise RuntimeError('cell b is broken')",
    ))
    result = pytester.runpytest()
    result.assert_outcomes(passed=2, failed=2, errors=1)
    result.stdout.fnmatch_lines([
        "*claim 'compare-loss_final-arm=a-lower-than-arm=b' needs cell arms[[]arm=b[]], which "
        "failed: RuntimeError: cell b is broken*",
    ])


def test_adaptive_seeds_decide_the_claim(pytester):
    pytester.makepyfile(exp_arms=NOISY.replace("seeds=4", "seeds=hp.adaptive(min=2, max=30)")
                        .replace('"c": 1.05', '"c": 1.4'))
    result = pytester.runpytest("-k", "a-vs-c")
    result.assert_outcomes(passed=1, deselected=4)
    # Two seeds cannot decide a 1.3-sd effect at alpha/looks; more seeds were added.
    m = re.search(r"arms on cpu, (\d+) seeds per cell", result.stdout.str())
    assert m and 2 < int(m.group(1)) < 30


@pytest.mark.parametrize("scope, family", [("experiment", 2), ("run", 4)])
def test_holm_adjusts_over_the_selected_claims(pytester, scope, family):
    pytester.makepyfile(exp_arms=NOISY, exp_arms2=NOISY.replace("def arms", "def arms2"))
    result = pytester.runpytest(f"--hpspec-holm={scope}")
    result.stdout.fnmatch_lines([f"*Holm-adjusted over {family} claims*"])
    alone = pytester.runpytest(f"--hpspec-holm={scope}", "-k", "arms2 and a-vs-c")
    alone.stdout.fnmatch_lines(["*a-vs-c*"])
    assert "Holm-adjusted" not in alone.stdout.str()  # a family of one: nothing to adjust


def test_bad_confidence_option(pytester):
    pytester.makepyfile(exp_arms=NOISY)
    result = pytester.runpytest("--hpspec-confidence=95")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--hpspec-confidence: '95' is not a probability in [[]0.5, 1)*"])


def test_refuted_example_fails_as_refuted(pytester):
    shutil.copy(ROOT / "examples" / "exp_refuted.py", pytester.path / "exp_refuted.py")
    result = pytester.runpytest("-k", "compare")
    result.assert_outcomes(failed=1, deselected=3)
    result.stdout.fnmatch_lines(["*val_loss final is lower for lr=0.001 than for lr=0.3*",
                                 "*for lr=0.001 than for lr=0.3*fail*"])
