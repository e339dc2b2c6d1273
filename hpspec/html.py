"""A run as one self-contained HTML file: inline SVG figures and tables, no script, no network.

Rendered from the ``--hpspec-json`` document (plain data), so a stored or exported run can be
rendered again later. Every string that comes from the user (names, ids, values, messages) goes
through :func:`html.escape`.
"""

from __future__ import annotations

import html
import math
import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from hpspec.report import CellRecord, _metrics_of, columns_for, printable
from hpspec.results import CellResult

__all__ = ["render_html"]

_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b",
            "#e377c2", "#7f7f7f", "#bcbd22")
# Viridis at five stops; the heatmap interpolates between them.
_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222;max-width:1400px}
h1{font-size:22px}h2{font-size:18px;margin-top:32px;border-bottom:1px solid #ccc}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 8px;
text-align:right}th{background:#f4f4f4}td.l,th.l{text-align:left}
.pass,.passed{color:#1a7f37}.fail,.failed,.FAILED,.error{color:#cf222e;font-weight:bold}
.inconclusive{color:#9a6700}.legend{font-size:12px;color:#555}.figs{display:flex;flex-wrap:wrap;gap:12px}
figure{margin:0}figcaption{font-size:12px;color:#555;text-align:center}
pre{background:#f6f8fa;padding:8px;white-space:pre-wrap;font-size:12px}
svg text{font:10px system-ui,sans-serif;fill:#333}
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


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _params_text(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


# ------------------------------------------------------------------------------- line chart


def _line_chart(title: str, series: Sequence[tuple[str, list[Any]]], width: int = 260,
                height: int = 170) -> str:
    """Curves by epoch, one polyline per series (NaN and infinity break a line)."""
    pad_l, pad_r, pad_t, pad_b = 44, 8, 18, 22
    values = [v for _, ys in series for y in ys if (v := _num(y)) is not None]
    n = max((len(ys) for _, ys in series), default=0)
    parts = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" width="{width}" '
             f'height="{height}" role="img" aria-label="{_e(title)}">',
             f'<text x="{width / 2}" y="12" text-anchor="middle">{_e(title)}</text>']
    if not values or n == 0:
        parts.append(f'<text x="{width / 2}" y="{height / 2}" text-anchor="middle">'
                     "no finite values</text></svg>")
        return "".join(parts)
    lo, hi = min(values), max(values)
    if hi == lo:
        lo, hi = lo - 0.5, hi + 0.5
    pw, ph = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(i: int) -> float:
        return pad_l + (pw * i / (n - 1) if n > 1 else pw / 2)

    def sy(v: float) -> float:
        return pad_t + ph * (1 - (v - lo) / (hi - lo))

    parts.append(f'<rect x="{pad_l}" y="{pad_t}" width="{pw}" height="{ph}" fill="none" '
                 'stroke="#bbb"/>')
    for v in (lo, (lo + hi) / 2, hi):
        parts.append(f'<text x="{pad_l - 3}" y="{sy(v) + 3:.1f}" text-anchor="end">'
                     f"{_fmt(v)}</text>")
    parts.append(f'<text x="{pad_l}" y="{height - 6}">1</text>'
                 f'<text x="{pad_l + pw}" y="{height - 6}" text-anchor="end">{n}</text>'
                 f'<text x="{pad_l + pw / 2}" y="{height - 6}" text-anchor="middle">epoch</text>')
    for k, (label, ys) in enumerate(series):
        color = _PALETTE[k % len(_PALETTE)]
        run: list[str] = []
        segments: list[list[str]] = []
        for i, y in enumerate(ys):
            v = _num(y)
            if v is None:
                if run:
                    segments.append(run)
                run = []
                continue
            run.append(f"{sx(i):.1f},{sy(v):.1f}")
        if run:
            segments.append(run)
        for seg in segments:
            if len(seg) == 1:
                x, y = seg[0].split(",")
                parts.append(f'<circle cx="{x}" cy="{y}" r="2" fill="{color}"/>')
            else:
                parts.append(f'<polyline class="curve" fill="none" stroke="{color}" '
                             f'stroke-width="1.5" points="{" ".join(seg)}">'
                             f"<title>{_e(label)}</title></polyline>")
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
    width = max(left + cw * len(col_vals) + 10, 460)
    height = top + ch * len(row_vals) + 10
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
    parts.append("</svg>")
    note = (f"<figcaption>averaged over {', '.join(_e(a) for a in other_axes)}</figcaption>"
            if other_axes else "")
    return f"<figure>{''.join(parts)}{note}</figure>"


# ------------------------------------------------------------------------------------ tables

def _records(exp: Mapping[str, Any]) -> list[CellRecord]:
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
    verdicts += [("across cells", v) for v in exp.get("claims", [])]
    if not verdicts:
        return ""
    rows = "".join(
        f'<tr><td class="l">{_e(where)}</td><td class="l">{_e(v["claim"])}</td>'
        f'<td class="l {_e(v["outcome"])}">{_e(v["outcome"])}</td>'
        f'<td>{_fmt(_num(v.get("p_pass")))}</td></tr>'
        for where, v in verdicts
    )
    failed = [v for _, v in verdicts if v["outcome"] != "pass"]
    details = "".join(f"<pre>{_e(v['message'])}</pre>" for v in failed)
    return ('<table><tr><th class="l">cell</th><th class="l">claim</th>'
            f'<th class="l">verdict</th><th>p</th></tr>{rows}</table>{details}')


# -------------------------------------------------------------------------------- document


def _experiment_section(exp: Mapping[str, Any]) -> str:
    records = _records(exp)
    metrics = _metrics_of(records)
    out = [f'<section class="experiment"><h2>{_e(exp["key"])}</h2>',
           _cell_table(exp, records), _claims_table(exp)]
    axes = list(exp["axes"])
    if len(axes) >= 2 and metrics:
        metric = next((m for m in ("val_acc", "val_loss") if m in metrics), metrics[0])
        out.append('<h3>Heatmap</h3><div class="figs">'
                   + _heatmap(metric, axes[0], axes[1], exp["cells"], axes[2:]) + "</div>")
    out.append("<h3>Curves by cell (seeds overlaid)</h3>")
    for c in exp["cells"]:
        seeds = (c.get("result") or {}).get("seeds", [])
        if not seeds:
            continue
        figs = "".join(
            "<figure>" + _line_chart(m, [(f"seed {s['seed']}", list(s["curves"].get(m, [])))
                                          for s in seeds]) + "</figure>"
            for m in metrics
        )
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
            f"<h1>hpspec run</h1><table>{env_rows}</table>{body}</body></html>")
