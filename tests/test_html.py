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
    assert text.count('<svg class="chart"') == 4 * 3  # 4 cells x (train_loss, val_loss, val_acc)
    assert text.count('<svg class="heatmap"') == 1
    assert text.count('class="curve"') == 4 * 3 * 2  # two seeds overlaid per chart


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


@pytest.mark.skipif(CHROMIUM is None, reason="needs Chromium (Debian package chromium)")
def test_html_figures_render_in_headless_chromium(report, tmp_path):
    shot = tmp_path / "shot.png"
    subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1200,1800", f"file://{report}"],
        check=True, capture_output=True, timeout=120,
    )
    colours = _png_pixels(str(shot))
    # the first two seed colours of the curves, drawn by the browser
    assert (0x1F, 0x77, 0xB4) in colours
    assert (0xD6, 0x27, 0x28) in colours
    # heatmap cells: at least one colour from the dark and one from the light end of viridis
    assert any(r < 90 and b > 80 and g < 100 for r, g, b in colours)
    assert any(r > 200 and g > 200 and b < 80 for r, g, b in colours)


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
