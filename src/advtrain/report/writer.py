"""Writing a robustness report: ``report.json``, ``report.md`` and the figures.

The JSON schema (``schema_version`` 1) holds at least:

* ``clean_accuracy`` (float) and ``robust_accuracy`` (attack name → accuracy, plus ``worst_case``),
* ``threat_model`` (``norm``, ``eps``, ``bounds``), ``n_examples``,
* ``eps_curve`` (list of ``{"eps", "accuracy"}`` with the attack used),
* ``checkpoint`` (``path``, ``sha256``), ``config_sha256``, ``data_sha256``,
* ``timings_s`` (phase → seconds), ``environment`` (versions, device),
* ``figures`` (name → file name in the report's folder).

Both console scripts fill the other sections too (``attacks``, ``counts``, ``eps_grid``,
``per_class``, ``certified``, ``sanity``, ``settings``: :mod:`advtrain.evaluation.report`);
:mod:`advtrain.report.schema` documents every key, and :func:`write_report` validates a report
against it before writing anything, then renders its sections into ``report.md`` and a
self-contained ``report.html`` (:mod:`advtrain.report.html`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import html
import json
import math
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from advtrain.report.schema import SCHEMA_VERSION, check_report


def sha256_file(path: str | os.PathLike[str]) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    """SHA-256 of a UTF-8 string."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@functools.lru_cache(maxsize=1)
def git_revision() -> tuple[str | None, bool | None]:
    """``(commit, dirty)`` of the git checkout advtrain is imported from, else ``(None, None)``.

    Only when the package's own files are tracked by that repository (an installed copy inside
    some other repository, e.g. a virtual environment in a project folder, gives ``None``).
    ``dirty`` is ``True`` when tracked files differ from the commit.
    """
    import subprocess

    import advtrain

    pkg = Path(advtrain.__file__).resolve()

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(
                ["git", "-C", str(pkg.parent), *args],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    if git("ls-files", "--error-unmatch", pkg.name) is None:
        return None, None
    commit = git("rev-parse", "HEAD")
    if commit is None:
        return None, None
    status = git("status", "--porcelain", "--untracked-files=no")
    return commit, (bool(status) if status is not None else None)


#: The environment fields the audit sections show, in order (see :func:`environment`).
ENVIRONMENT_KEYS: tuple[str, ...] = (
    "advtrain",
    "git_commit",
    "git_dirty",
    "torch",
    "lightning_package",
    "lightning",
    "pytorch_lightning",
    "python",
    "platform",
    "device",
)


def environment(lightning_package: str | None = None) -> dict[str, Any]:
    """Versions of advtrain (and its git commit when known), torch, Lightning, Python; device.

    Args:
        lightning_package: The Lightning package the run trained with (``lightning.pytorch`` or
            ``pytorch_lightning``), recorded as ``lightning_package``; the versions of both
            packages are recorded where installed.
    """
    import importlib.metadata
    import platform

    import torch

    import advtrain

    commit, dirty = git_revision()
    info: dict[str, Any] = {
        "advtrain": advtrain.__version__,
        "git_commit": commit,
        "git_dirty": dirty,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
    }
    if lightning_package is not None:
        info["lightning_package"] = str(lightning_package)
    for distribution in ("lightning", "pytorch_lightning"):
        # the installed versions, read without importing either package
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            info[distribution] = importlib.metadata.version(distribution.replace("_", "-"))
    return info


def pct(value: float | None) -> str:
    return (
        "n/a"
        if value is None or (isinstance(value, float) and math.isnan(value))
        else f"{100 * value:.1f}%"
    )


def normalization_text(threat: Mapping[str, Any]) -> str:
    """How the threat model's inputs relate to the model's (for the md/html threat line)."""
    norm = threat.get("normalization")
    if not norm:
        return "inputs in pixel units"
    where = (
        "inside the model"
        if norm.get("where") == "model"
        else "in the data pipeline, undone before attacking"
    )
    return (
        f"eps in pixel units; normalisation (mean {list(norm['mean'])}, std {list(norm['std'])}) "
        f"{where}"
    )


def summary_table(report: Mapping[str, Any], report_path: str | None = None) -> str:
    """The console table printed at the end of a run (worst case marked)."""
    threat = report["threat_model"]
    head = (
        f"advtrain · {report.get('data', {}).get('name', 'data')} · {threat['norm']} "
        f"eps={threat['eps']:.4g} · {report['n_examples']} test examples"
    )
    rows = [("clean", report["clean_accuracy"], "")]
    robust = dict(report.get("robust_accuracy", {}))
    worst = robust.pop("worst_case", None)
    for name, acc in robust.items():
        rows.append((name, acc, ""))
    if worst is not None and len(robust) > 1:
        rows.append(("worst case", worst, ""))
    if robust:
        worst_name = min(robust, key=lambda k: robust[k])
        rows = [(n, a, "   ← worst case" if n == worst_name else m) for n, a, m in rows]
    for name, acc in report.get("certified", {}).get("summary", {}).items():
        rows.append((f"certified ({name})", acc, ""))
    width = max(len(n) for n, _, _ in rows) + 4
    lines = [head] + [f"{n:<{width}} {pct(a):>6}{m}" for n, a, m in rows]
    if report_path:
        lines.append(f"report  {report_path}")
    return "\n".join(lines)


def result_rows(report: Mapping[str, Any]) -> list[tuple[str, float | None, str]]:
    """The main results table: ``(label, accuracy, "correct/n" or "")`` rows.

    Clean accuracy, each attack (and the members of an ensemble, cumulative), the worst case and
    every certified accuracy of ``certified.summary``. ``report.md`` and ``report.html`` both
    render these rows, so the two always show the same numbers.
    """
    counts = report.get("counts") or {}
    n = counts.get("n")

    def frac(key: str) -> str:
        return f"{counts[key]}/{n}" if n and key in counts else ""

    rows: list[tuple[str, float | None, str]] = [("clean", report["clean_accuracy"], frac("clean"))]
    robust = dict(report.get("robust_accuracy") or {})
    worst = robust.pop("worst_case", None)
    attacks = report.get("attacks") or {}
    for name, acc in robust.items():
        rows.append((name, acc, frac(name)))
        for member in (attacks.get(name) or {}).get("members") or []:
            rows.append(
                (
                    f"{name} · after {member['name']}",
                    member["accuracy_after"],
                    f"{member['correct_after']}/{n}" if n else "",
                )
            )
    if worst is not None:
        rows.append(("worst case (all attacks)", worst, frac("worst_case")))
    cert = report.get("certified") or {}
    for name, acc in (cert.get("summary") or {}).items():
        rows.append((f"certified: {name}", acc, ""))
    return rows


def escape_md(text: Any) -> str:
    """Text from a config, a model or a data set, made inert in Markdown: HTML special characters
    as entities (renderers pass raw HTML through), table pipes escaped, one line."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def _code(value: Any) -> str:
    """A code span; backticks in the value would end it, so they become quotes."""
    if value in (None, ""):
        return "n/a"
    return "`" + str(value).replace("`", "'").replace("\n", " ") + "`"


def protocol_lines(report: Mapping[str, Any]) -> list[str]:
    """One sentence per AutoAttack whose protocol the report records (``"rapid"``): which
    protocol ran and how far it escalated."""
    lines = []
    for name, entry in (report.get("attacks") or {}).items():
        protocol = (entry or {}).get("protocol")
        if not protocol:
            continue
        text = f"{name}: AutoAttack {protocol['version']}"
        if protocol.get("escalated"):
            text += f", escalated ({protocol.get('reason') or 'no reason recorded'}"
            coverage = protocol.get("escalation_coverage")
            if coverage is not None:
                text += (
                    f"; Square with all its queries covered {coverage:.0%} of the examples "
                    "still robust after the white-box members"
                )
            text += ")"
        else:
            text += ", not escalated (its Square check found nothing the white-box members missed)"
        lines.append(text)
    return lines


def _markdown_eps_grid(report: Mapping[str, Any]) -> list[str]:
    grid = report.get("eps_grid")
    if grid and grid.get("eps"):
        names = list(grid["accuracy"])
        out = ["", "## Robust accuracy against eps", ""]
        if report.get("eps_curve_attack"):
            out += [f"Worst case: {escape_md(report['eps_curve_attack'])}.", ""]
        out.append("| eps | " + " | ".join(escape_md(n.replace("_", " ")) for n in names) + " |")
        out.append("|---|" + "---|" * len(names))
        for i, eps in enumerate(grid["eps"]):
            cells = " | ".join(pct(grid["accuracy"][n][i]) for n in names)
            out.append(f"| {eps:.4g} | {cells} |")
        return out
    curve = report.get("eps_curve")
    if curve:
        attack = escape_md(report.get("eps_curve_attack", ""))
        out = ["", f"## Robust accuracy against eps ({attack})", ""]
        out += ["| eps | accuracy |", "|---|---|"]
        out += [f"| {p['eps']:.4g} | {pct(p['accuracy'])} |" for p in curve]
        return out
    return []


def _markdown_certified(report: Mapping[str, Any]) -> list[str]:
    cert = report.get("certified") or {}
    bounds = cert.get("bounds") or {}
    smoothing = cert.get("smoothing")
    if not bounds and not smoothing:
        return []
    out = ["", "## Certified robustness", ""]
    if bounds:
        out += ["| method | eps | verified accuracy |", "|---|---|---|"]
        for name, res in bounds.items():
            if not res.get("supported"):
                reason = escape_md(res.get("reason", ""))
                out.append(f"| {escape_md(name)} | — | not supported: {reason} |")
                continue
            for eps, acc in zip(res["eps"], res["accuracy"], strict=True):
                out.append(f"| {escape_md(name)} | {eps:.4g} | {pct(acc)} |")
    if smoothing:
        out += [
            "",
            f"Randomized smoothing (Cohen et al. 2019) of the model, σ = {smoothing['sigma']:g}, "
            f"n0 = {smoothing['n0']}, n = {smoothing['n']}, alpha = {smoothing['alpha']:g}, "
            f"{smoothing['n_examples']} examples, abstain rate "
            f"{pct(smoothing.get('abstain_rate'))} (certifies the smoothed classifier g, not the "
            "model itself):",
            "",
            "| L2 radius | certified accuracy |",
            "|---|---|",
        ]
        out += [
            f"| {r:.4g} | {pct(a)} |"
            for r, a in zip(smoothing["radii"], smoothing["accuracy"], strict=True)
        ]
    gap = cert.get("gap") or {}
    if gap:
        if gap.get("gap") is not None:
            out += [
                "",
                f"Gap at eps={gap['eps']:.4g}: empirical worst case {pct(gap['empirical'])} − "
                f"certified ({escape_md(gap['certificate'])}) {pct(gap['certified'])} = "
                f"{100 * gap['gap']:.1f} percentage points (the true robust accuracy lies in "
                "between).",
            ]
        else:
            out += ["", f"Gap at eps={gap.get('eps', 0):.4g}: no certificate at this eps."]
    return out


def _markdown_per_class(report: Mapping[str, Any]) -> list[str]:
    pc = report.get("per_class")
    if not pc or not pc.get("classes"):
        return []
    names = list(pc["accuracy"])
    out = ["", "## Accuracy per class", ""]
    header = " | ".join(escape_md(n.replace("_", " ")) for n in names)
    out.append(f"| class | n | {header} |")
    out.append("|---|---|" + "---|" * len(names))
    for i, cls in enumerate(pc["classes"]):
        cells = " | ".join(pct(pc["accuracy"][n][i]) for n in names)
        out.append(f"| {escape_md(cls)} | {pc['support'][i]} | {cells} |")
    return out


def _markdown_sanity(report: Mapping[str, Any]) -> list[str]:
    sanity = report.get("sanity")
    if not sanity:
        return []
    out = ["", "## Sanity checks", ""]
    for flag in sanity.get("flags", []):
        code, message = escape_md(flag["code"]), escape_md(flag["message"])
        if flag["triggered"]:
            line = f"- **[WARNING] {code}**: {message}"
            if flag.get("advice"):
                line += f" *What to do:* {escape_md(flag['advice'])}"
        else:
            line = f"- [ok] {code}: {message}"
        out.append(line)
    return out


def _markdown_settings(report: Mapping[str, Any]) -> list[str]:
    settings = report.get("settings")
    if not settings:
        return []
    out = ["", "## Evaluation settings", ""]
    for key in ("seed", "batch_size", "n_examples", "device"):
        if key in settings:
            out.append(f"- {key}: {_code(settings[key])}")
    for name, params in (settings.get("attacks") or {}).items():
        out.append(f"- attack {_code(name)}: {_code(json.dumps(params, sort_keys=True))}")
    for key in ("eps_grid", "certify", "sanity"):
        if key in settings:
            out.append(f"- {key}: {_code(json.dumps(settings[key], sort_keys=True))}")
    return out


def _markdown_audit(report: Mapping[str, Any]) -> list[str]:
    env = report.get("environment") or {}
    ckpt = report.get("checkpoint") or {}
    out = ["", "## Audit", ""]
    out.append(
        f"- checkpoint: {_code(ckpt.get('source') or ckpt.get('path'))}, sha256 "
        f"{_code(ckpt.get('source_sha256') or ckpt.get('sha256'))}"
        + (f", read with {ckpt['loaded_with']}" if ckpt.get("loaded_with") else "")
    )
    out.append(
        f"- resolved config: {_code(report.get('config_file'))}, sha256 "
        f"{_code(report.get('config_sha256'))}"
    )
    out.append(
        f"- evaluated data: sha256 {_code(report.get('data_sha256'))}"
        + (
            f" ({report['data']['hash_method']})"
            if report.get("data", {}).get("hash_method")
            else ""
        )
    )
    prov = report.get("data_provenance")
    if prov:
        out.append(
            f"- training data: {prov.get('size')} examples of {_code(prov.get('name'))}, Merkle "
            f"root {_code(prov.get('merkle_root'))}, manifest {_code(prov.get('manifest'))}"
        )
    for key in ENVIRONMENT_KEYS:
        if key in env:
            out.append(f"- {key}: {_code(env[key])}")
    return out


def markdown(report: Mapping[str, Any]) -> str:
    """``report.md``: the same numbers as ``report.json``, for people."""
    threat = report["threat_model"]
    out = ["# advtrain robustness report", ""]
    sanity = report.get("sanity") or {}
    if sanity and sanity.get("white_box_trustworthy", True) is None:
        out += [f"> **Sanity checks not run.** {escape_md(sanity.get('warning', ''))}", ""]
    elif sanity and not sanity.get("white_box_trustworthy", True):
        out += [
            f"> **WARNING: white-box robust accuracy cannot be trusted.** "
            f"{escape_md(sanity.get('warning', ''))}",
            "",
        ]
    out += [
        f"- data: {escape_md(report.get('data', {}).get('name', 'n/a'))}, "
        f"{report['n_examples']} examples (sha256 {_code(report.get('data_sha256'))})",
        f"- threat model: {escape_md(threat['norm'])} eps={threat['eps']:.6g}, "
        f"bounds {tuple(threat['bounds'])} ({escape_md(normalization_text(threat))})",
        f"- checkpoint: {_code(report.get('checkpoint', {}).get('path'))} "
        f"(sha256 {_code(report.get('checkpoint', {}).get('sha256'))})",
        f"- config sha256: {_code(report.get('config_sha256'))}",
        "",
    ]
    rows = result_rows(report)
    if report.get("counts"):
        out += ["| evaluation | accuracy | correct |", "|---|---|---|"]
        out += [f"| {escape_md(n)} | {pct(a)} | {c} |" for n, a, c in rows]
    else:
        out += ["| evaluation | accuracy |", "|---|---|"]
        out += [f"| {escape_md(n)} | {pct(a)} |" for n, a, _ in rows]
    protocols = protocol_lines(report)
    if protocols:
        out += [""] + [f"- protocol: {escape_md(line)}" for line in protocols]
    out += _markdown_eps_grid(report)
    out += _markdown_certified(report)
    out += _markdown_per_class(report)
    out += _markdown_sanity(report)
    out += _markdown_settings(report)
    for name, fname in report.get("figures", {}).items():
        out += ["", f"![{escape_md(name)}]({escape_md(fname)})"]
    timings = report.get("timings_s", {})
    if timings:
        out += ["", "## Timings", ""] + [f"- {k}: {v:.1f} s" for k, v in timings.items()]
    out += _markdown_audit(report)
    return "\n".join(out) + "\n"


def plot_eps_curve(
    curve: list[Mapping[str, float]], path: str | os.PathLike[str], title: str
) -> None:
    """Saves robust accuracy against eps as a PNG."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    eps = [p["eps"] for p in curve]
    acc = [100 * p["accuracy"] for p in curve]
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=120)
    ax.plot(eps, acc, marker="o")
    ax.set_xlabel("eps")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def write_report(
    report: dict[str, Any], out_dir: str | os.PathLike[str], html: bool = True
) -> Path:
    """Writes ``report.json``, ``report.md``, the figures and ``report.html`` into ``out_dir``.

    Figures (:func:`advtrain.report.figures.make_figures`) are drawn for whatever sections the
    report has; ``report.html`` embeds them, so it is a single self-contained file.

    Returns:
        The path of ``report.json``.
    """
    from advtrain.report.figures import make_figures

    report.setdefault("schema_version", SCHEMA_VERSION)
    check_report(json_safe(report), "the report to write")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures = dict(report.get("figures", {}))
    figures.update(make_figures(report, out))
    report["figures"] = figures
    (out / "report.json").write_text(
        json.dumps(json_safe(report), indent=2, sort_keys=False, allow_nan=False) + "\n"
    )
    (out / "report.md").write_text(markdown(report))
    if html:
        from advtrain.report.html import render_html

        (out / "report.html").write_text(render_html(report, out), encoding="utf-8")
    return out / "report.json"


def json_safe(value: Any) -> Any:
    """NaN and infinities become ``null`` (JSON has no NaN)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value
