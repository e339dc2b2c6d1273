"""A run as one self-contained HTML file: inline SVG figures and tables, no script, no network.

Rendered from the ``--hpspec-json`` document (plain data), so a stored or exported run can be
rendered again later. Every string that comes from the user (names, ids, values, messages) goes
through :func:`html.escape`.

Each experiment opens with the comparison: every cell's curves on one chart per metric (mean
over seeds, the seeds' range as a band, one colour per cell, epoch 0 = before training so a
diverged cell is never an empty line), then each metric's final value against each numeric
grid axis (log x past a decade), with the cell claims' thresholds drawn and labelled with their
verdicts. Tables, the heatmap and each cell's seeds follow.

Why hand-written SVG rather than Vega-Lite or matplotlib: the charts are four kinds (lines with
bands, points with error bars, a heatmap, threshold lines) that need a few hundred lines here;
the page stays one file with no script at all (its Content-Security-Policy forbids scripts, so
a hostile experiment name cannot run anything), opens the same with JavaScript off, and needs
no extra package. Vega-Lite would mean bundling and pinning some 800 KB of JavaScript per
report and allowing scripts; matplotlib would be a heavy optional dependency whose output we
would still have to lay out. The browser test (tests/test_html.py) checks what is drawn.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from hpspec.report import CellRecord, columns_for, metrics_of, printable
from hpspec.results import CellResult

__all__ = ["render_html"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22")
# Viridis at five stops; the heatmap interpolates between them.
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:16px 24px;color:#222;max-width:1400px}
h1{font-size:20px;margin:0 0 4px}h2{font-size:17px;margin:10px 0 4px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.pass,.passed{color:#1a7f37}.fail,.failed,.FAILED,.error{color:#cf222e;font-weight:bold}
.inconclusive{color:#9a6700}.legend{font-size:12px;color:#555}.figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}
pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;font-size:12px}
svg text{font:11px system-ui,sans-serif;fill:#333}svg text.title{font-size:13px;font-weight:600}
.legend-key{margin:6px 0 10px;font-size:13px}.legend-key .key{margin-right:14px;font-weight:bold}
figure.small svg{width:300px;height:202px}details{margin:6px 0}
"""


def _e(x: Any) -> str:
    # Control characters (an ANSI escape in a value) are shown as escapes, not passed on.
    return html.escape(printable(x), quote=True)


def _num(x: Any) -> float | None:
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def format_number(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


# ------------------------------------------------------------------------------ chart frame


def _ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi] (1, 2 or 5 times a power of ten)."""
    if hi <= lo:
        return [lo]
    raw = (hi - lo) / max(n - 1, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.ceil(lo / step - 1e-9) * step
    out, v = [], first
    while v <= hi + step * 1e-9:
        out.append(0.0 if abs(v) < step * 1e-9 else v)
        v += step
    return out


def _y_domain(metric: str, values: Sequence[float]) -> tuple[float, float]:
    """Data range padded a little; accuracies stay in [0, 1] and losses at or above 0 (a
    metric that cannot go below zero never gets an axis that does)."""
    lo, hi = (min(values), max(values)) if values else (0.0, 1.0)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad
    if metric.endswith("acc"):
        lo, hi = max(lo, 0.0), min(hi, 1.0)
    elif metric.endswith("loss") and min(values, default=0.0) >= 0:
        lo = max(lo, 0.0)
    return lo, hi


class _Frame:
    """A plot area with linear y and linear or log x, its gridlines, ticks and axis titles."""

    W, H, L, R, T, B = 400, 270, 52, 12, 26, 40

    def __init__(self, title: str, x_lo: float, x_hi: float, y_lo: float, y_hi: float,
                 log_x: bool = False) -> None:
        self.title, self.log_x = title, log_x
        f = math.log10 if log_x else float
        self.x_lo, self.x_hi = f(x_lo), f(x_hi)
        if self.x_hi == self.x_lo:
            self.x_lo, self.x_hi = self.x_lo - 1, self.x_hi + 1
        self.y_lo, self.y_hi = y_lo, y_hi
        self.pw, self.ph = self.W - self.L - self.R, self.H - self.T - self.B

    def x(self, v: float) -> float:
        v = math.log10(v) if self.log_x else v
        return self.L + self.pw * (v - self.x_lo) / (self.x_hi - self.x_lo)

    def y(self, v: float) -> float:
        v = min(max(v, self.y_lo), self.y_hi)
        return self.T + self.ph * (1 - (v - self.y_lo) / (self.y_hi - self.y_lo))

    def open(self, css: str, x_ticks: Sequence[tuple[float, str]], x_title: str,
             y_title: str) -> list[str]:
        parts = [f'<svg class="{css}" xmlns="http://www.w3.org/2000/svg" width="{self.W}" '
                 f'height="{self.H}" viewBox="0 0 {self.W} {self.H}" role="img" '
                 f'aria-label="{_e(self.title)}">',
                 f'<text class="title" x="{self.L + self.pw / 2}" y="15" '
                 f'text-anchor="middle">{_e(self.title)}</text>',
                 f'<rect x="{self.L}" y="{self.T}" width="{self.pw}" height="{self.ph}" '
                 'fill="#fff" stroke="#999"/>']
        for v in _ticks(self.y_lo, self.y_hi, 6):
            y = self.y(v)
            parts.append(f'<line class="grid" x1="{self.L}" x2="{self.L + self.pw}" '
                         f'y1="{y:.1f}" y2="{y:.1f}" stroke="#e4e4e4"/>'
                         f'<text x="{self.L - 4}" y="{y + 4:.1f}" text-anchor="end">'
                         f"{v:.3g}</text>")
        for v, label in x_ticks:
            x = self.x(v)
            parts.append(f'<line class="grid" x1="{x:.1f}" x2="{x:.1f}" y1="{self.T}" '
                         f'y2="{self.T + self.ph}" stroke="#eee"/>'
                         f'<text x="{x:.1f}" y="{self.T + self.ph + 14}" text-anchor="middle">'
                         f"{_e(label)}</text>")
        parts.append(f'<text x="{self.L + self.pw / 2}" y="{self.H - 4}" '
                     f'text-anchor="middle">{_e(x_title)}</text>'
                     f'<text transform="translate(12,{self.T + self.ph / 2}) rotate(-90)" '
                     f'text-anchor="middle">{_e(y_title)}</text>')
        return parts

    def target(self, t: Mapping[str, Any]) -> str:
        """A claim's threshold as a dashed line, labelled with the claim's verdict."""
        y = self.y(t["value"])
        color = "#1a7f37" if t["ok"] else "#cf222e"
        ty = y - 4 if y - self.T > 16 else y + 13  # the label below a line near the top
        return (f'<g class="target"><line x1="{self.L}" x2="{self.L + self.pw}" y1="{y:.1f}" '
                f'y2="{y:.1f}" stroke="{color}" stroke-width="1.5" stroke-dasharray="6 4"/>'
                f'<text x="{self.L + self.pw - 4}" y="{ty:.1f}" text-anchor="end" '
                f'style="fill:{color}">{_e(t["label"])}</text></g>')

    def diverged(self, x: float, color: str, label: str) -> str:
        """A seed that diverged: a cross where it stopped, on the top edge (its loss left
        the chart), with the epoch in its tooltip."""
        px, py = self.x(x), self.T + 7
        return (f'<g class="diverged"><path d="M{px - 5:.1f},{py - 5:.1f}l10,10m0,-10l-10,10" '
                f'stroke="{color}" stroke-width="2.5"/><title>{_e(label)}</title></g>')


def _finite(xs: Iterable[Any]) -> list[float]:
    return [v for x in xs if (v := _num(x)) is not None]


def _seed_curve(seed: Mapping[str, Any], metric: str) -> list[float | None]:
    """Epoch 0 (before training) then each epoch; None where not finite."""
    start = _num((seed.get("initial") or {}).get(metric))
    return [start] + [_num(v) for v in seed["curves"].get(metric, [])]


@attrs.frozen
class _Series:
    label: str
    color: str
    seeds: tuple[Mapping[str, Any], ...]


def _curves_chart(metric: str, series: Sequence[_Series], targets: Sequence[Mapping[str, Any]],
                  band: bool = True) -> str:
    """One metric by epoch for several series: the mean over seeds as a line, the seeds'
    range as a band, diverged seeds marked where they stopped, claim targets drawn."""
    data = []
    for s in series:
        curves = [_seed_curve(seed, metric) for seed in s.seeds]
        n = max((len(c) for c in curves), default=0)
        cols: list[list[float]] = [
            [v for c in curves if i < len(c) and (v := c[i]) is not None] for i in range(n)]
        mean: list[float | None] = [statistics.fmean(c) if c else None for c in cols]
        rng: list[tuple[float, float] | None] = [(min(c), max(c)) if c else None for c in cols]
        data.append((s, mean, rng))
    values = [v for _, m, r in data for x, xr in zip(m, r, strict=True) if x is not None
              for v in ((x, *xr) if band and xr else (x,))]
    values += [t["value"] for t in targets]
    epochs = max((len(m) - 1 for _, m, _ in data), default=1) or 1
    lo, hi = _y_domain(metric, values)
    f = _Frame(metric, 0, epochs, lo, hi)
    xt = [(float(v), f"{v:g}") for v in _ticks(0, epochs, min(epochs + 1, 6)) if v == int(v)]
    parts = f.open("chart compare", xt, "epoch (0: before training)", metric)
    for s, mean, rng in data:
        if band and len(s.seeds) > 1:
            known = [(i, r) for i, r in enumerate(rng) if r is not None]
            if len(known) > 1:
                up = " ".join(f"{f.x(i):.1f},{f.y(r[1]):.1f}" for i, r in known)
                down = " ".join(f"{f.x(i):.1f},{f.y(r[0]):.1f}" for i, r in reversed(known))
                parts.append(f'<polygon class="band" points="{up} {down}" fill="{s.color}" '
                             'fill-opacity="0.18" stroke="none"/>')
        run: list[str] = []
        for i, v in enumerate([*mean, None]):
            if v is not None:
                run.append(f"{f.x(i):.1f},{f.y(v):.1f}")
                continue
            if len(run) > 1:
                parts.append(f'<polyline class="curve" fill="none" stroke="{s.color}" '
                             f'stroke-width="2" points="{" ".join(run)}"><title>{_e(s.label)}'
                             "</title></polyline>")
            elif run:
                x, y = run[0].split(",")
                parts.append(f'<circle class="curve" cx="{x}" cy="{y}" r="3" '
                             f'fill="{s.color}"><title>{_e(s.label)}</title></circle>')
            run = []
        for seed in s.seeds:
            d = seed.get("diverged")
            if d:
                parts.append(f.diverged(d["epoch"], s.color, f"{s.label}, seed {seed['seed']}: "
                                        f"diverged at epoch {d['epoch']}"))
    parts += [f.target(t) for t in targets]
    parts.append("</svg>")
    return "".join(parts)


def _final_chart(metric: str, axis: str, cells: Sequence[Mapping[str, Any]],
                 others: Sequence[str], colors: Mapping[str, str],
                 targets: Sequence[Mapping[str, Any]], log: bool | None = None) -> str:
    """The final ``metric`` against the numeric grid ``axis`` (log scale when ``log``, or by
    default when its values span more than a decade): the mean over seeds with the seeds' range
    as an error bar, one series per combination of the ``others`` axes; a cell with no finite
    final value is a cross."""
    xs = sorted({float(c["params"][axis]) for c in cells})
    log_x = xs[0] > 0 and (xs[-1] / xs[0] > 10 if log is None else log)
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for c in cells:
        groups.setdefault(_params_text({k: c["params"].get(k) for k in others}), []).append(c)
    points = []
    for label, members in groups.items():
        for c in sorted(members, key=lambda c: float(c["params"][axis])):
            finals = _finite(s["curves"].get(metric, [None])[-1] if s["curves"].get(metric)
                             else None for s in (c.get("result") or {}).get("seeds", []))
            points.append((label, c, finals))
    values = [v for _, _, fs in points for v in fs] + [t["value"] for t in targets]
    lo, hi = _y_domain(metric, values)
    x_lo, x_hi = xs[0], xs[-1]
    if log_x:
        x_lo, x_hi = x_lo / 10 ** 0.25, x_hi * 10 ** 0.25
    else:
        pad = (x_hi - x_lo) * 0.06 or 1
        x_lo, x_hi = x_lo - pad, x_hi + pad
    f = _Frame(f"{metric} (final) by {axis}", x_lo, x_hi, lo, hi, log_x=log_x)
    parts = f.open("chart final", [(v, f"{v:g}") for v in xs],
                   f"{axis} (log scale)" if log_x else axis, f"{metric} (final)")
    for k, label in enumerate(groups):
        line_color = "#555" if len(groups) == 1 else _PALETTE[k % len(_PALETTE)]
        run: list[str | None] = []
        for lab, c, fs in points:
            if lab != label:
                continue
            x = f.x(float(c["params"][axis]))
            color = colors[c["cell_id"]] if len(groups) == 1 else line_color
            tip = f"{c['cell_id']}: "
            if not fs:
                run.append(None)
                parts.append(f.diverged(float(c["params"][axis]), color,
                                        tip + "no finite final value (diverged)"))
                continue
            m = statistics.fmean(fs)
            run.append(f"{x:.1f},{f.y(m):.1f}")
            parts.append(f'<line class="errorbar" x1="{x:.1f}" x2="{x:.1f}" '
                         f'y1="{f.y(min(fs)):.1f}" y2="{f.y(max(fs)):.1f}" stroke="{color}" '
                         'stroke-width="2"/>'
                         f'<circle class="point" cx="{x:.1f}" cy="{f.y(m):.1f}" r="4" '
                         f'fill="{color}"><title>{_e(tip)}{m:.4g} (mean of {len(fs)} seeds, '
                         f"range {min(fs):.4g} to {max(fs):.4g})</title></circle>")
        segs: list[list[str]] = []
        cur: list[str] = []
        for p in [*run, None]:
            if p is None:
                if len(cur) > 1:
                    segs.append(cur)
                cur = []
            else:
                cur.append(p)
        parts += [f'<polyline fill="none" stroke="{line_color}" stroke-opacity="0.6" '
                  f'points="{" ".join(seg)}"/>' for seg in segs]
        if len(groups) > 1:
            parts.append(f'<text class="series" x="{f.L + 6}" y="{f.T + 14 + 13 * k}" '
                         f'style="fill:{line_color}">&#9644; {_e(label)}</text>')
    parts += [f.target(t) for t in targets]
    parts.append("</svg>")
    return "".join(parts)


# ---------------------------------------------------------------------------------- heatmap


def _color(t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(_VIRIDIS) - 1)
    i = min(int(t), len(_VIRIDIS) - 2)
    f = t - i
    a, b = _VIRIDIS[i], _VIRIDIS[i + 1]
    r, g, bl = (round(a[j] + (b[j] - a[j]) * f) for j in range(3))
    return f"rgb({r},{g},{bl})"


def _heatmap(metric: str, rows_axis: str, cols_axis: str, cells: Sequence[Mapping[str, Any]],
             other_axes: Sequence[str]) -> str:
    """Mean final ``metric`` over seeds (and over the other axes) for each pair of values."""
    row_vals: list[Any] = []
    col_vals: list[Any] = []
    acc: dict[tuple[str, str], list[float]] = {}
    for c in cells:
        p = c["params"]
        rv, cv = p.get(rows_axis), p.get(cols_axis)
        if rv not in row_vals:
            row_vals.append(rv)
        if cv not in col_vals:
            col_vals.append(cv)
        finals = [_num(s["curves"].get(metric, [None])[-1] if s["curves"].get(metric) else None)
                  for s in (c.get("result") or {}).get("seeds", [])]
        acc.setdefault((repr(rv), repr(cv)), []).extend(v for v in finals if v is not None)
    means = {k: statistics.fmean(v) for k, v in acc.items() if v}
    if not means:
        return ""
    lo, hi = min(means.values()), max(means.values())
    cw, ch, left, top = 70, 26, 90, 40
    bar_x = left + cw * len(col_vals) + 24
    width = max(bar_x + 90, 460)
    height = max(top + ch * len(row_vals) + 10, top + 110)
    parts = [f'<svg class="heatmap" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="{_e(metric)} heatmap">',
             f'<text x="{left}" y="12">{_e(metric)} (final, mean) by {_e(rows_axis)} (rows) '
             f'and {_e(cols_axis)} (columns)</text>']
    for j, cv in enumerate(col_vals):
        parts.append(f'<text x="{left + cw * j + cw / 2}" y="{top - 6}" '
                     f'text-anchor="middle">{_e(cv)}</text>')
    for i, rv in enumerate(row_vals):
        y = top + ch * i
        parts.append(f'<text x="{left - 6}" y="{y + ch / 2 + 3}" text-anchor="end">{_e(rv)}'
                     "</text>")
        for j, cv in enumerate(col_vals):
            v = means.get((repr(rv), repr(cv)))
            x = left + cw * j
            if v is None:
                parts.append(f'<rect x="{x}" y="{y}" width="{cw}" height="{ch}" fill="#eee"/>')
                continue
            t = 0.5 if hi == lo else (v - lo) / (hi - lo)
            ink = "#000" if t > 0.6 else "#fff"
            parts.append(f'<rect class="cell" x="{x}" y="{y}" width="{cw}" height="{ch}" '
                         f'fill="{_color(t)}"><title>{_e(rows_axis)}={_e(rv)}, '
                         f'{_e(cols_axis)}={_e(cv)}: {v:.4g}</title></rect>'
                         f'<text x="{x + cw / 2}" y="{y + ch / 2 + 3}" text-anchor="middle" '
                         f'style="fill:{ink}">{v:.3g}</text>')
    # The colour bar: what a colour means, from the lowest to the highest mean.
    bar_h = max(ch * len(row_vals), 100)
    steps = 20
    parts.append(f'<g class="colorbar"><text x="{bar_x}" y="{top - 6}">{_e(metric)}</text>')
    for k in range(steps):
        t = 1 - k / steps
        parts.append(f'<rect x="{bar_x}" y="{top + bar_h * k / steps:.1f}" width="14" '
                     f'height="{bar_h / steps + 0.5:.1f}" fill="{_color(t)}"/>')
    parts.append(f'<text x="{bar_x + 18}" y="{top + 8}">{hi:.3g}</text>'
                 f'<text x="{bar_x + 18}" y="{top + bar_h}">{lo:.3g}</text></g>')
    parts.append("</svg>")
    note = (f"<figcaption>averaged over {', '.join(_e(a) for a in other_axes)}</figcaption>"
            if other_axes else "")
    return f"<figure>{''.join(parts)}{note}</figure>"


# ------------------------------------------------------------------------------------ tables

def records_from_document(exp: Mapping[str, Any]) -> list[CellRecord]:
    """The document's cells as the terminal report's records, so both show the same columns."""
    return [CellRecord(exp["name"], c["cell_id"], dict(c["params"]), c["outcome"],
                       CellResult.from_dict(c["result"]) if c.get("result") else None)
            for c in exp["cells"]]


def _cell_table(exp: Mapping[str, Any], records: Sequence[CellRecord]) -> str:
    axes = exp["axes"]
    cols, _ = columns_for(records)
    head = "".join(f'<th class="l">{_e(a)}</th>' for a in axes)
    head += "".join(f'<th class="l">{_e(c.header)}</th>' if c.name == "verdict"
                    else f"<th>{_e(c.header)}</th>" for c in cols)
    rows = []
    for r in records:
        tds = "".join(f'<td class="l">{_e(r.params.get(a))}</td>' for a in axes)
        for c in cols:
            if c.name == "verdict":
                tds += f'<td class="l {_e(r.outcome)}">{_e(r.outcome)}</td>'
            else:
                tds += f"<td>{_e('-' if r.result is None else c.value(r.result))}</td>"
        rows.append(f"<tr>{tds}</tr>")
    legend = "".join(f"<li>{_e(c.legend)}</li>" for c in cols if c.legend)
    return (f"<table><tr>{head}</tr>{''.join(rows)}</table>"
            + (f'<ul class="legend">{legend}</ul>' if legend else ""))


def _claims_table(exp: Mapping[str, Any]) -> str:
    verdicts = [(c["cell_id"], v) for c in exp["cells"] for v in c["verdicts"]]
    if not verdicts:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(where)}</td><td class="l">{_e(v["claim"])}</td>'
        f'<td class="l {_e(v["outcome"])}">{_e(v["outcome"])}</td>'
        f'<td>{format_number(_num(v.get("p_pass")))}</td></tr>'
        for where, v in verdicts
    )
    failed = [v for _, v in verdicts if v["outcome"] != "pass"]
    details = "".join(f"<pre>{_e(v['message'])}</pre>" for v in failed)
    return ('<h3>Claims per cell</h3><table><tr><th class="l">cell</th><th class="l">claim</th>'
            f'<th class="l">verdict</th><th>p</th></tr>{rows}</table>{details}')


def _cross_table(exp: Mapping[str, Any]) -> str:
    """Cross-cell claims with what decided them: the difference, its interval, the effect
    size (Cohen's d) when the claim compares two groups, and both p-values."""
    claims = exp.get("claims", [])
    if not claims:
        return ""
    rows = []
    for v in claims:
        eff = v.get("effect") or {}
        diff = _num(eff.get("difference"))
        low, high = _num(eff.get("low")), _num(eff.get("high"))
        interval = (f"[{format_number(low)}, {format_number(high)}] "
                    f"({100 * float(eff['level']):.0f}%)" if eff else "-")
        rows.append(
            f'<tr><td class="l">{_e(v["claim"])}</td>'
            f'<td class="l {_e(v["outcome"])}">{_e(v["outcome"])}</td>'
            f"<td>{format_number(diff)}</td><td>{_e(interval)}</td>"
            f"<td>{format_number(_num(eff.get('effect_size')))}</td>"
            f'<td>{format_number(_num(v.get("p_pass")))}</td><td>{format_number(_num(v.get("p_fail")))}</td></tr>')
    details = "".join(f"<pre>{_e(v['message'])}</pre>" for v in claims)
    return ('<h3>Claims across cells</h3><table class="cross"><tr><th class="l">claim</th>'
            '<th class="l">verdict</th><th>difference</th><th>interval</th>'
            "<th>effect size (d)</th><th>p for</th><th>p against</th></tr>"
            f"{''.join(rows)}</table><details><summary>how each was decided</summary>"
            f"{details}</details>")


def _targets(exp: Mapping[str, Any], metric: str) -> list[dict[str, Any]]:
    """The cell claims' thresholds on ``metric``, one line per (op, value), with the cells
    it is claimed for and whether it held on all of them."""
    out: dict[tuple[str, float], dict[str, Any]] = {}
    for c in exp["cells"]:
        for v in c["verdicts"]:
            t = v.get("target")
            value = _num((t or {}).get("value"))
            if not t or t["metric"] != metric or value is None:
                continue
            entry = out.setdefault((t["op"], value), {"value": value, "ok": True, "cells": []})
            entry["ok"] = entry["ok"] and v["outcome"] == "pass"
            entry["cells"].append(c["cell_id"])
    for (op, value), e in out.items():
        e["label"] = (f"{op} {value:g} for {', '.join(e['cells'])}: "
                      f"{'pass' if e['ok'] else 'FAIL'}")
    return list(out.values())


def _cell_colors(exp: Mapping[str, Any]) -> dict[str, str]:
    return {c["cell_id"]: _PALETTE[k % len(_PALETTE)] for k, c in enumerate(exp["cells"])}


def _numeric_axes(exp: Mapping[str, Any]) -> list[str]:
    out = []
    for a in exp["axes"]:
        vals = {c["params"].get(a) for c in exp["cells"]}
        if len(vals) > 1 and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                 for v in vals):
            out.append(a)
    return out


def _comparison(exp: Mapping[str, Any], metrics: Sequence[str]) -> str:
    """The experiment at a glance: every cell's curves on one chart per metric, then each
    metric's final value against each numeric grid axis."""
    colors = _cell_colors(exp)
    cells = [c for c in exp["cells"] if (c.get("result") or {}).get("seeds")]
    if not cells:
        return ""
    if exp.get("search"):
        return _search_charts(exp, cells, metrics, colors)
    series = [_Series(c["cell_id"], colors[c["cell_id"]], tuple(c["result"]["seeds"]))
              for c in cells]
    key = " ".join(f'<span class="key" style="color:{colors[c["cell_id"]]}">&#9644; '
                   f'<span style="color:#222">{_e(c["cell_id"])}</span></span>' for c in cells)
    n_seeds = max(len(c["result"]["seeds"]) for c in cells)
    figs = [_curves_chart(m, series, _targets(exp, m)) for m in metrics]
    for axis in _numeric_axes(exp):
        others = [a for a in exp["axes"] if a != axis]
        figs += [_final_chart(m, axis, cells, others, colors, _targets(exp, m))
                 for m in metrics]
    return (f'<div class="legend-key">{key} <small>line: mean of {n_seeds} seeds; band and '
            "error bar: their range; &#10005;: a seed diverged there; dashed: a claim's "
            "threshold</small></div>"
            + '<div class="figs">' + "".join(f"<figure>{f}</figure>" for f in figs) + "</div>")


def _search_charts(exp: Mapping[str, Any], cells: Sequence[Mapping[str, Any]],
                   metrics: Sequence[str], colors: Mapping[str, str]) -> str:
    """A search at a glance: the best trials' curves (not every trial's), then the search
    metric at each trial's last epoch against each numeric hyperparameter, one point per
    trial (log x where the space samples that dimension on a log scale)."""
    info = exp["search"]
    by_id = {c["cell_id"]: c for c in cells}
    best = [by_id[cid] for cid in info.get("best", []) if cid in by_id]
    series = [_Series(c["cell_id"], colors[c["cell_id"]], tuple(c["result"]["seeds"]))
              for c in best]
    key = " ".join(f'<span class="key" style="color:{colors[c["cell_id"]]}">&#9644; '
                   f'<span style="color:#222">{_e(c["cell_id"])}</span></span>' for c in best)
    figs = [_curves_chart(m, series, _targets(exp, m)) for m in metrics] if series else []
    metric = info.get("metric")
    shown = [metric] if metric in metrics else list(metrics[:1])
    log = set(info.get("log", []))
    for axis in _numeric_axes(exp):
        figs += [_final_chart(m, axis, cells, [], colors, _targets(exp, m), log=axis in log)
                 for m in shown]
    pruned = len(info.get("pruned", {}))
    return (f'<div class="legend-key">best {len(best)} of {len(cells)} trials by '
            f'{_e(metric)}: {key} <small>by-hyperparameter charts: one point per trial at '
            f"its last epoch ({pruned} trial(s) pruned early, so lower)</small></div>"
            + '<div class="figs">' + "".join(f"<figure>{f}</figure>" for f in figs) + "</div>")


# -------------------------------------------------------------------------------- document


def _experiment_section(exp: Mapping[str, Any]) -> str:
    records = records_from_document(exp)
    metrics = metrics_of(records)
    out = [f'<section class="experiment"><h2>{_e(exp["key"])}</h2>',
           _comparison(exp, metrics), _cross_table(exp), _claims_table(exp),
           "<h3>Cells</h3>", _cell_table(exp, records)]
    axes = list(exp["axes"])
    if len(axes) >= 2 and metrics and not exp.get("search"):  # a search's values are scattered
        metric = next((m for m in ("val_acc", "val_loss") if m in metrics), metrics[0])
        out.append('<h3>Heatmap</h3><div class="figs">'
                   + _heatmap(metric, axes[0], axes[1], exp["cells"], axes[2:]) + "</div>")
    out.append("<h3>Each cell's seeds</h3>")
    for c in exp["cells"]:
        seeds = (c.get("result") or {}).get("seeds", [])
        if not seeds:
            continue
        series = [_Series(f"seed {s['seed']}", _PALETTE[k % len(_PALETTE)], (s,))
                  for k, s in enumerate(seeds)]
        figs = "".join(f'<figure class="small">{_curves_chart(m, series, [], band=False)}'
                       "</figure>" for m in metrics)
        key = " ".join(f'<span style="color:{_PALETTE[k % len(_PALETTE)]}">&#9644; seed '
                       f'{_e(s["seed"])}</span>' for k, s in enumerate(seeds))
        out.append(f'<h4>{_e(exp["name"])}[{_e(c["cell_id"])}] '
                   f'<span class="{_e(c["outcome"])}">{_e(c["outcome"])}</span> '
                   f'<small>{key}</small></h4><div class="figs">{figs}</div>')
    out.append("</section>")
    return "".join(out)


def render_html(doc: Mapping[str, Any]) -> str:
    """The whole run (an ``hpspec-run`` JSON document) as one HTML page."""
    env = doc.get("environment", {})
    env_rows = "".join(f'<tr><th class="l">{_e(k)}</th><td class="l">{_e(v)}</td></tr>'
                       for k, v in env.items())
    body = "".join(_experiment_section(e) for e in doc.get("experiments", []))
    return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
            "style-src 'unsafe-inline'\">"
            f"<title>hpspec run</title><style>{_CSS}</style></head><body>"
            f"<h1>hpspec run</h1>{body}<h2>Environment</h2><table>{env_rows}</table>"
            "</body></html>")
