"""The HTML report: self-contained, escaped, and rendered by a real browser."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

HOSTILE = """
import torch
import hpspec as hp

@hp.experiment(
    grid=hp.grid(lr=[0.05, 0.5], act=["relu", "<img src=x onerror=alert(1)>"]),
    epochs=3, seeds=2, data=hp.datasets.digits(n_train=300),
    name="<script>alert('name')</script>",
    claims=[hp.where(lr=0.05).expect(hp.metric("val_acc").final() > 0.99)],
)
def hostile(case):
    act = "relu" if case.act == "relu" else "tanh"
    model = hp.models.mlp(64, [16], 10, activation=act)
    return model, torch.optim.SGD(model.parameters(), lr=case.lr)
"""


@pytest.fixture
def report(pytester) -> str:
    pytester.makepyfile(exp_hostile=HOSTILE)
    pytester.runpytest("--hpspec-html=run.html", "--hpspec-table=none")
    return str(pytester.path / "run.html")


def test_html_is_self_contained_and_escapes_user_strings(report):
    text = Path(report).read_text(encoding="utf-8")
    assert "<script" not in text.lower()  # the user's name is text, not markup
    assert "&lt;script&gt;alert(&#x27;name&#x27;)&lt;/script&gt;" in text
    assert "<img" not in text
    assert "&lt;img src=x onerror=alert(1)&gt;" in text
    # nothing to fetch: the SVG namespace is the one URL, an identifier that is never loaded
    assert "http://" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in text
    assert " src=" not in text.replace("&lt;img src=", "")
    # comparison: 3 metrics' curves of all 4 cells, then each metric's final value by lr (the
    # one numeric axis); detail: 4 cells x 3 metrics with their 2 seeds
    assert text.count('<svg class="chart compare"') == 3 + 4 * 3
    assert text.count('<svg class="chart final"') == 3
    assert text.count('<svg class="heatmap"') == 1
    assert text.count('class="colorbar"') == 1
    assert text.count('class="band"') == 3 * 4  # the seeds' range of each cell, overlaid
    assert text.count('class="target"') == 2  # val_acc > 0.99: curves and final-by-lr


def _png_pixels(path: str) -> set[tuple[int, int, int]]:
    """The distinct RGB colours of an 8-bit RGB or RGBA PNG (enough for a screenshot)."""
    data = Path(path).read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, ctype = 8, b"", 0, 0, 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, ctype = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and ctype in (2, 6)
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw = zlib.decompress(idat)
    bpp = 3 if ctype == 2 else 4
    stride = width * bpp
    prev = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    i = 0
    for _ in range(height):
        f, line = raw[i], bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b = prev[x]
            c = prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        colours.update(tuple(line[x : x + 3]) for x in range(0, stride, bpp))
        prev = line
    return colours


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
#: Screenshots CI keeps as artifacts (gitignored).
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium with a fresh profile and nothing that talks to the network."""
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}",
         *args], check=True, capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_html_figures_render_in_headless_chromium(report, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "hostile_report.png"
    _chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1800", f"file://{report}")
    colours = _png_pixels(str(shot))
    # the first two cells' colours of the overlaid curves, drawn by the browser
    assert (0x1F, 0x77, 0xB4) in colours
    assert (0xD6, 0x27, 0x28) in colours
    # the failed claim's threshold (val_acc > 0.99 at lr=0.05) as a red dashed line
    assert (0xCF, 0x22, 0x2E) in colours
    # heatmap cells: at least one colour from the dark and one from the light end of viridis
    assert any(r < 90 and b > 80 and g < 100 for r, g, b in colours)
    assert any(r > 200 and g > 200 and b < 80 for r, g, b in colours)
    # the page as the browser parsed it: charts with their legend and threshold labels
    dom = _chromium(tmp_path, "--dump-dom", f"file://{report}").stdout
    assert dom.count('class="chart compare"') == 15 and dom.count('class="chart final"') == 3
    assert 'class="legend-key"' in dom and "lr=0.05-act=relu" in dom
    assert "&gt; 0.99 for lr=0.05-act=relu" in dom and "FAIL" in dom




def _doc(lrs, diverged_lr):
    """A run document of an lr grid in which one cell's seeds all diverge in epoch 1."""
    cells = []
    for lr in lrs:
        seeds = []
        for k in range(3):
            bad = lr == diverged_lr
            acc = [0.1] * 4 if bad else [0.5 + 0.1 * e + 0.01 * k for e in range(4)]
            loss = ["nan"] * 4 if bad else [1.0 / (e + 1) + 0.01 * k for e in range(4)]
            seeds.append({"seed": k, "curves": {"val_loss": loss, "val_acc": acc},
                          "initial": {"val_loss": 2.3, "val_acc": 0.1},
                          "diverged": {"epoch": 1, "step": 3, "reason": "x"} if bad else None,
                          "epoch_seconds": [1.0] * 4, "measurements": {}})
        target = {"metric": "val_loss", "op": "<", "value": 0.3}
        verdicts = [{"claim": "loss low", "outcome": "pass", "message": "m", "p_pass": None,
                     "target": target}] if lr == lrs[-2] else []
        cells.append({"cell_id": f"lr={lr}", "params": {"lr": lr}, "outcome": "passed",
                      "verdicts": verdicts,
                      "result": {"experiment": "e", "cell_id": f"lr={lr}",
                                 "params": {"lr": lr}, "device": "cpu", "seeds": seeds}})
    claim = {"claim": "a beats b", "outcome": "pass", "message": "m", "p_pass": 0.001,
             "p_fail": 0.99, "effect": {"difference": -0.52, "low": -0.56, "high": -0.48,
                                        "level": 0.9, "effect_size": -3.1}}
    return {"environment": {}, "experiments": [
        {"key": "exp_lr.py::e", "name": "e", "axes": ["lr"], "cells": cells,
         "claims": [claim]}]}


def test_comparison_charts_log_axis_targets_divergence_and_effect():
    from hpspec.html import render_html

    text = render_html(_doc([1e-3, 3e-2, 0.3, 50.0], 50.0))
    first = text.index('<svg class="chart compare"')
    assert first < text.index("<h3>Cells</h3>")  # the comparison comes before the tables
    assert "lr (log scale)" in text  # 1e-3 to 50 spans more than a decade
    # one line per cell on the overlay; the diverged cell still has its epoch-0 point
    overlay = text[first:text.index("</svg>", first)]
    assert overlay.count('class="curve"') == 4
    assert overlay.count('class="diverged"') == 3  # each diverged seed marked
    assert "diverged at epoch 1" in overlay
    assert "&lt; 0.3 for lr=0.3: pass" in overlay  # the target, with its verdict
    # val_acc's axes never run below 0
    acc = text[text.index('aria-label="val_acc"'):]
    acc = acc[:acc.index("</svg>")]
    assert ">-0." not in acc
    # the cross-cell claim's effect: difference, interval, effect size, both p-values
    row = text[text.index('<table class="cross">'):]
    row = row[:row.index("</table>")]
    for cell in ("-0.52", "[-0.56, -0.48] (90%)", "-3.1", "0.001", "0.99"):
        assert cell in row


def test_final_chart_is_linear_when_the_axis_spans_a_decade_or_less():
    from hpspec.html import render_html

    text = render_html(_doc([0.1, 0.3, 1.0], None))
    assert "(log scale)" not in text and 'class="chart final"' in text
    assert 'class="diverged"' not in text


ESCAPES = """
import hpspec as hp

@hp.experiment(grid=hp.grid(act=["\\x1b[2J\\x1b[H", "ok"]), epochs=2)
def ansi(case):
    for epoch in range(2):
        yield {"\\x1b[31mloss": 1.0 / (epoch + 1)}
"""


def test_control_characters_in_values_and_metric_names_are_shown_escaped(pytester):
    pytester.makepyfile(exp_ansi=ESCAPES)
    result = pytester.runpytest("--hpspec-cache=off", "--hpspec-html=run.html", "-v",
                                "--hpspec-json=run.json")
    out = result.stdout.str()
    result.assert_outcomes(passed=2)
    assert "\x1b" not in out, [ln for ln in out.splitlines() if "\x1b" in ln]
    assert "\\x1b[2J\\x1b[H" in out and "\\x1b[31mloss" in out
    html_text = (pytester.path / "run.html").read_text(encoding="utf-8")
    assert "\x1b" not in html_text and "\\x1b[2J" in html_text
