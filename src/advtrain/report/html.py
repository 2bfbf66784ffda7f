"""``report.html``: one self-contained page a reviewer can open offline.

No network assets: the CSS is inline and every figure is embedded as a ``data:image/png;base64``
URI, so the file can be mailed, archived or attached to a paper's supplementary material as is.
The numbers come from the same helpers as ``report.md``
(:func:`advtrain.report.writer.result_rows`), so the two never disagree.
"""

from __future__ import annotations

import base64
import html
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advtrain.report.writer import (
    ENVIRONMENT_KEYS,
    normalization_text,
    pct,
    protocol_lines,
    result_rows,
)

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:980px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}
h2{font-size:1.2em;margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.92em}
th,td{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
tr.worst td{font-weight:bold}
code{background:#f5f5f5;padding:0 .25em;border-radius:3px;font-size:.88em;word-break:break-all}
.banner{background:#fde2e1;border:2px solid #c0392b;color:#7b1b12;padding:.8em 1em;
border-radius:6px;margin:1em 0;font-size:1.05em}
.banner strong{font-size:1.1em}
.ok{background:#e7f6ea;border:1px solid #6bb77b;padding:.5em 1em;border-radius:6px}
ul.flags{list-style:none;padding-left:0}
ul.flags li{margin:.4em 0;padding:.4em .7em;border-radius:4px;background:#f7f7f7}
ul.flags li.triggered{background:#fff1d6;border-left:5px solid #e67e22}
.fig{margin:1em 0}.fig img{max-width:100%;border:1px solid #eee}
.muted{color:#666;font-size:.9em}
"""


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(header: list[str], rows: list[list[str]], classes: list[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _img(out_dir: Path, fname: str, title: str) -> str:
    path = out_dir / fname
    if not path.is_file():
        return f'<p class="muted">figure {_e(fname)} is missing</p>'
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<div class="fig"><img alt="{_e(title)}" title="{_e(title)}" '
        f'src="data:image/png;base64,{data}"></div>'
    )


def _summary(report: Mapping[str, Any]) -> str:
    threat = report["threat_model"]
    data = report.get("data") or {}
    items = [
        f"data: <b>{_e(data.get('name', 'n/a'))}</b> ({_e(data.get('split', 'test'))}), "
        f"{_e(report['n_examples'])} examples",
        f"threat model: <b>{_e(threat['norm'])} eps={float(threat['eps']):.6g}</b>, bounds "
        f"{_e(tuple(threat['bounds']))} ({_e(normalization_text(threat))})",
    ]
    if report.get("created"):
        items.append(f"created: {_e(report['created'])}")
    return "<ul>" + "".join(f"<li>{i}</li>" for i in items) + "</ul>"


def _results(report: Mapping[str, Any]) -> str:
    rows, classes = [], []
    with_counts = bool(report.get("counts"))
    for label, acc, count in result_rows(report):
        row = [_e(label), _e(pct(acc))] + ([_e(count)] if with_counts else [])
        rows.append(row)
        classes.append("worst" if label.startswith("worst case") else "")
    header = ["evaluation", "accuracy"] + (["correct"] if with_counts else [])
    notes = "".join(f"<li>protocol: {_e(line)}</li>" for line in protocol_lines(report))
    return _table(header, rows, classes) + (f"<ul>{notes}</ul>" if notes else "")


def _eps_grid(report: Mapping[str, Any]) -> str:
    grid = report.get("eps_grid")
    if grid and grid.get("eps"):
        names = list(grid["accuracy"])
        rows = [
            [f"{eps:.4g}"] + [_e(pct(grid["accuracy"][n][i])) for n in names]
            for i, eps in enumerate(grid["eps"])
        ]
        return "<h2>Robust accuracy against eps</h2>" + _table(
            ["eps"] + [n.replace("_", " ") for n in names], rows
        )
    curve = report.get("eps_curve")
    if curve:
        rows = [[f"{p['eps']:.4g}", _e(pct(p["accuracy"]))] for p in curve]
        title = f"Robust accuracy against eps ({report.get('eps_curve_attack', '')})"
        return f"<h2>{_e(title)}</h2>" + _table(["eps", "accuracy"], rows)
    return ""


def _certified(report: Mapping[str, Any]) -> str:
    cert = report.get("certified") or {}
    bounds = cert.get("bounds") or {}
    smoothing = cert.get("smoothing")
    if not bounds and not smoothing:
        return ""
    parts = ["<h2>Certified robustness</h2>"]
    if bounds:
        rows = []
        for name, res in bounds.items():
            if not res.get("supported"):
                rows.append([_e(name), "—", f"not supported: {_e(res.get('reason', ''))}"])
                continue
            for eps, acc in zip(res["eps"], res["accuracy"], strict=True):
                rows.append([_e(name), f"{eps:.4g}", _e(pct(acc))])
        parts.append(_table(["method", "eps", "verified accuracy"], rows))
    if smoothing:
        parts.append(
            f"<p>Randomized smoothing (Cohen et al., ICML 2019), σ = {smoothing['sigma']:g}, "
            f"n0 = {smoothing['n0']}, n = {smoothing['n']}, alpha = {smoothing['alpha']:g}, "
            f"{smoothing['n_examples']} examples, abstain rate "
            f"{_e(pct(smoothing.get('abstain_rate')))}. It certifies the smoothed classifier g, "
            "not the model itself.</p>"
        )
        rows = [
            [f"{r:.4g}", _e(pct(a))]
            for r, a in zip(smoothing["radii"], smoothing["accuracy"], strict=True)
        ]
        parts.append(_table(["L2 radius", "certified accuracy"], rows))
    gap = cert.get("gap") or {}
    if gap.get("gap") is not None:
        parts.append(
            f"<p>Gap at eps={gap['eps']:.4g}: empirical worst case {_e(pct(gap['empirical']))} − "
            f"certified ({_e(gap['certificate'])}) {_e(pct(gap['certified']))} = "
            f"<b>{100 * gap['gap']:.1f} percentage points</b>; the true robust accuracy lies in "
            "between.</p>"
        )
    elif gap:
        parts.append(f"<p>Gap at eps={gap.get('eps', 0):.4g}: no certificate at this eps.</p>")
    return "".join(parts)


def _per_class(report: Mapping[str, Any]) -> str:
    pc = report.get("per_class")
    if not pc or not pc.get("classes"):
        return ""
    names = list(pc["accuracy"])
    rows = [
        [_e(c), _e(pc["support"][i])] + [_e(pct(pc["accuracy"][n][i])) for n in names]
        for i, c in enumerate(pc["classes"])
    ]
    return "<h2>Accuracy per class</h2>" + _table(
        ["class", "n"] + [n.replace("_", " ") for n in names], rows
    )


def _sanity(report: Mapping[str, Any]) -> str:
    sanity = report.get("sanity")
    if not sanity:
        return ""
    items = []
    for flag in sanity.get("flags", []):
        if flag["triggered"]:
            advice = f"<br><b>What to do:</b> {_e(flag['advice'])}" if flag.get("advice") else ""
            items.append(
                f'<li class="triggered"><b>WARNING · {_e(flag["code"])}</b>: '
                f"{_e(flag['message'])}{advice}</li>"
            )
        else:
            items.append(f"<li>ok · {_e(flag['code'])}: {_e(flag['message'])}</li>")
    return "<h2>Sanity checks</h2>" + '<ul class="flags">' + "".join(items) + "</ul>"


def _settings(report: Mapping[str, Any]) -> str:
    settings = report.get("settings")
    if not settings:
        return ""
    rows = []
    for key in ("seed", "batch_size", "n_examples", "device"):
        if key in settings:
            rows.append([_e(key), f"<code>{_e(settings[key])}</code>"])
    for name, params in (settings.get("attacks") or {}).items():
        rows.append(
            [f"attack {_e(name)}", f"<code>{_e(json.dumps(params, sort_keys=True))}</code>"]
        )
    for key in ("eps_grid", "certify", "sanity"):
        if key in settings:
            rows.append([_e(key), f"<code>{_e(json.dumps(settings[key], sort_keys=True))}</code>"])
    return "<h2>Evaluation settings</h2>" + _table(["setting", "value"], rows)


def _audit(report: Mapping[str, Any]) -> str:
    ckpt = report.get("checkpoint") or {}
    env = report.get("environment") or {}
    data = report.get("data") or {}
    rows = [
        ["checkpoint", f"<code>{_e(ckpt.get('source') or ckpt.get('path'))}</code>"],
        [
            "checkpoint sha256",
            f"<code>{_e(ckpt.get('source_sha256') or ckpt.get('sha256'))}</code>",
        ],
    ]
    if ckpt.get("loaded_with"):
        rows.append(["checkpoint read with", _e(ckpt["loaded_with"])])
    rows += [
        ["resolved config", f"<code>{_e(report.get('config_file', 'n/a'))}</code>"],
        ["config sha256", f"<code>{_e(report.get('config_sha256'))}</code>"],
        ["data sha256", f"<code>{_e(report.get('data_sha256'))}</code>"],
    ]
    if data.get("hash_method"):
        rows.append(["data hash method", _e(data["hash_method"])])
    for key in ENVIRONMENT_KEYS:
        if key in env:
            rows.append([_e(key), f"<code>{_e(env[key])}</code>"])
    return "<h2>Audit</h2>" + _table(["item", "value"], rows)


def _timings(report: Mapping[str, Any]) -> str:
    timings = report.get("timings_s") or {}
    if not timings:
        return ""
    rows = [[_e(k), f"{float(v):.1f} s"] for k, v in timings.items()]
    return "<h2>Timings</h2>" + _table(["phase", "time"], rows)


def render_html(report: Mapping[str, Any], out_dir: str | os.PathLike[str]) -> str:
    """The HTML page of ``report``; figures are read from ``out_dir`` and embedded.

    Args:
        report: A report dictionary (see :mod:`advtrain.report.schema`).
        out_dir: The folder holding the figures named in ``report["figures"]``.
    """
    out = Path(out_dir)
    sanity = report.get("sanity") or {}
    if sanity and sanity.get("white_box_trustworthy", True) is None:
        banner = (
            '<div class="banner"><strong>Sanity checks not run.</strong><br>'
            f"{_e(sanity.get('warning', ''))}</div>"
        )
    elif sanity and not sanity.get("white_box_trustworthy", True):
        banner = (
            '<div class="banner"><strong>WARNING: white-box robust accuracy cannot be trusted.'
            f"</strong><br>{_e(sanity.get('warning', ''))}</div>"
        )
    elif sanity:
        banner = '<div class="ok">No sanity check fired.</div>'
    else:
        banner = ""
    figures = "".join(
        f"<h3>{_e(title)}</h3>{_img(out, fname, title)}"
        for title, fname in (report.get("figures") or {}).items()
    )
    body = [
        "<h1>advtrain robustness report</h1>",
        banner,
        _summary(report),
        "<h2>Results</h2>",
        _results(report),
        "<h2>Figures</h2>" + figures if figures else "",
        _eps_grid(report),
        _certified(report),
        _per_class(report),
        _sanity(report),
        _settings(report),
        _audit(report),
        _timings(report),
        f'<p class="muted">schema_version {_e(report.get("schema_version"))}; '
        "the same numbers are in report.json and report.md.</p>",
    ]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>advtrain report</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(p for p in body if p)
        + "\n</body></html>\n"
    )


__all__ = ["render_html"]
