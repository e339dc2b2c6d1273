"""The end-of-run summary as lines, without pytest: what the plugin prints line by line."""

from __future__ import annotations

from pathlib import Path

from hpspec.session import Session
from hpspec.summary import Line, summary_lines


def test_summary_lines_say_store_problems_and_cache_hits_in_order():
    state = Session(device_option="cpu", table="none", store_path=Path("s.sqlite"))
    state.store_error = "disk is read-only"
    state.report_warnings.append("--hpspec-json=x.json: not written (OSError: nope)")
    state.cached_cells.add(("k", "lr=1"))
    lines = summary_lines(state, grade=False)
    assert [line.text for line in lines] == [
        "hpspec: disk is read-only; results were not stored",
        "hpspec: --hpspec-json=x.json: not written (OSError: nope)",
        "hpspec: 1 cell(s) from the cache in s.sqlite (--hpspec-cache=refresh retrains them)",
    ]
    assert lines[0].markup() == {"yellow": True} and lines[2].markup() == {}
    assert Line("x", color="red", bold=True).markup() == {"red": True, "bold": True}


def test_a_reason_shared_by_several_cells_reads_in_the_plural():
    from hpspec.plan import StackGroup, stacked_note

    why = "building its recipe raised (its own run reports the error)"
    line = stacked_note([StackGroup(32, 2, ("a", "b"))], {"c": why, "d": why})
    assert ("2 cells trained alone, one by one, because building their recipe raised (their "
            "own run reports the error) (e.g. c)") in line
    one = stacked_note([StackGroup(32, 2, ("a", "b"))], {"c": why})
    assert f"1 cell trained alone, one by one, because {why} (c)" in one
