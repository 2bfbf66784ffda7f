"""Evidence that cannot be turned against its user: signed ledgers a forger cannot rebuild, kept
heads that reveal truncation, honest resumes and concurrent runs that always verify, stored units
that cannot be edited into better numbers, and reports that do not carry raw HTML."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from advtrain.cli.config import compose
from advtrain.cli.eval_state import unit_digest
from advtrain.cli.evaluate import main, run
from advtrain.report.ledger import append_entry, canonical_json, entry_hash, verify_ledger
from advtrain.report.signing import generate_keypair, load_private_key, load_public_key

from .test_hostile_run_dir import run_folder

EVAL = [
    "n_examples=12",
    "batch_size=6",
    "attacks=pgd",
    "attacks.pgd-50x5.steps=2",
    "attacks.pgd-50x5.restarts=1",
    "eps_grid.factors=[]",
    "certify.bounds.methods=[]",
    "sanity.n_examples=8",
    "progress=false",
]


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys"))


def evaluate(run_dir: Path, out: Path, ledger: Path, *extra: str) -> dict[str, Any]:
    overrides = [f"run_dir={run_dir}", *EVAL, f"ledger={ledger}", *extra]
    return run(compose("eval", overrides, str(out)))


def small_ledger(folder: Path, signing_key: Any = None, n: int = 3) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    ledger = folder / "ledger.jsonl"
    for i in range(n):
        report = folder / f"report{i}.json"
        report.write_text(json.dumps({"robust_accuracy": 0.30 + i / 100}))
        append_entry(
            ledger, {"report": report}, {"robust_accuracy": 0.30 + i / 100}, signing_key=signing_key
        )
    return ledger


def reforge(ledger: Path, edit_index: int = 0, resign: Any = None) -> None:
    """What a forger does: edit an entry and its file, then recompute every hash after it."""
    entries = [json.loads(line) for line in ledger.read_text().splitlines()]
    entries[edit_index]["summary"]["robust_accuracy"] = 0.76
    report = ledger.parent / entries[edit_index]["files"]["report"]["path"]
    report.write_text(json.dumps({"robust_accuracy": 0.76}))
    from advtrain.report.writer import sha256_file

    entries[edit_index]["files"]["report"]["sha256"] = sha256_file(report)
    prev = "0" * 64
    for entry in entries:
        entry["prev_sha256"] = prev
        entry["sha256"] = entry_hash(entry)
        if resign is not None:
            from advtrain.report.signing import key_id, sign

            entry["signature"] = {
                "key_id": key_id(resign.public_key()),
                "ed25519": sign(resign, entry["sha256"].encode()),
            }
        prev = entry["sha256"]
    ledger.write_text("".join(canonical_json(e) + "\n" for e in entries))


def test_a_reforged_ledger_passes_as_a_chain_and_fails_against_the_key(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    ledger = small_ledger(tmp_path, load_private_key(private))
    head = verify_ledger(ledger, public_key=load_public_key(public)).head
    reforge(ledger)
    chain_only = verify_ledger(ledger)
    assert chain_only.ok  # a chain alone cannot tell: and the output says so
    assert "anyone who can rewrite the ledger" in chain_only.format(str(ledger))
    signed = verify_ledger(ledger, public_key=load_public_key(public))
    assert not signed.ok
    assert any("invalid signature" in p for p in signed.problems), signed.problems
    assert not verify_ledger(ledger, head=head).ok
    # a forger who signs with a key of their own is caught too
    forger_private, _ = generate_keypair(tmp_path / "forger")
    reforge(ledger, resign=load_private_key(forger_private))
    again = verify_ledger(ledger, public_key=load_public_key(public))
    assert any("signed by another key" in p for p in again.problems), again.problems


def test_a_truncated_ledger_fails_against_the_kept_head(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, public = keys
    ledger = small_ledger(tmp_path, load_private_key(private))
    head = verify_ledger(ledger).head
    assert head is not None
    lines = ledger.read_text().splitlines()
    ledger.write_text("\n".join(lines[:-1]) + "\n")  # the last entry removed
    key = load_public_key(public)
    assert verify_ledger(ledger, public_key=key).ok  # signatures alone cannot see it
    truncated = verify_ledger(ledger, public_key=key, head=head)
    assert not truncated.ok and "last entries were removed" in truncated.problems[0]
    # a ledger that grew after the kept head still verifies
    ledger.write_text("\n".join(lines) + "\n")
    grown = small_ledger(tmp_path / "g", n=2)
    assert verify_ledger(grown, head=verify_ledger(grown).head).ok


def test_verify_reports_malformed_lines_and_never_reads_outside_its_folder(
    tmp_path: Path,
) -> None:
    ledger = small_ledger(tmp_path, n=1)
    entry = json.loads(ledger.read_text())
    entry["files"]["secret"] = {"path": "/etc/shadow", "sha256": "0" * 64}
    entry["sha256"] = entry_hash(entry)
    bad_lines = [
        canonical_json(entry),
        '{"index": 1, "summary": {"robust_accuracy": NaN}}',
        '{"index": 2, "files": [1, 2], "summary": {}}',
        "[1, 2, 3]",
    ]
    ledger.write_text("\n".join(bad_lines) + "\n")
    result = verify_ledger(ledger)
    text = result.format(str(ledger))
    assert not result.ok
    assert "NaN is not valid" in text and "'files' is not an object" in text
    assert "not a JSON object" in text
    assert result.outside == 1
    assert "shadow" not in text, "a file outside the ledger's folder was reported on"
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("advtrain-eval")), "verify", str(ledger)],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]


def test_documented_resume_and_signed_entries_verify_end_to_end(
    tmp_path: Path, keys: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    private, public = keys
    run_dir = run_folder(tmp_path)
    ledger, out = tmp_path / "audit" / "ledger.jsonl", tmp_path / "audit" / "eval"
    first = evaluate(run_dir, out, ledger, f"ledger_key={private}")
    second = evaluate(run_dir, out, ledger, f"ledger_key={private}")  # the same command again
    assert first["report_dir"] != second["report_dir"]
    assert Path(first["report_dir"], "report.json").exists()
    assert Path(second["report_dir"]).parent.name == "reports"
    assert second["resume"]["reused"] > 0 and second["resume"]["rejected"] == 0
    assert second["robust_accuracy"] == first["robust_accuracy"]
    with pytest.raises(SystemExit) as code:
        main(["verify", str(ledger), "--public-key", str(public)])
    assert code.value.code == 0, capsys.readouterr()
    printed = capsys.readouterr().out
    assert "all 2 entries carry valid signatures" in printed


def test_two_evaluations_started_together_keep_their_own_folders(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path)
    exe = Path(sys.executable).with_name("advtrain-eval")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [str(exe), f"run_dir={run_dir}", *EVAL, "ledger=ledger.jsonl"]
    procs = [
        subprocess.Popen(
            cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    folders = {p.parent for p in (tmp_path / "outputs" / "eval").rglob("report.json")}
    assert len(folders) == 2
    assert verify_ledger(tmp_path / "ledger.jsonl").ok


def tamper(state: Path, digest: Any = None) -> int:
    """Sets every attack unit's 'robust' to all True (what the red team did); returns how many."""
    count = 0
    for path in sorted(state.rglob("batch_*.pt")):
        if "attack" not in str(path):
            continue
        stored = torch.load(path, weights_only=True)
        stored["value"]["robust"] = torch.ones_like(stored["value"]["robust"])
        if digest is not None:
            stored["digest"] = digest(path, stored["value"])
        torch.save(stored, path)
        count += 1
    return count


def test_tampered_units_are_recomputed_and_reported(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path)
    out = tmp_path / "eval"
    honest = evaluate(run_dir, out, tmp_path / "ledger.jsonl")
    assert tamper(out / "eval_state") == 2
    again = evaluate(run_dir, out, tmp_path / "ledger.jsonl")
    assert again["resume"]["rejected"] == 2
    assert again["robust_accuracy"] == honest["robust_accuracy"]
    assert "resumed_state_rejected" in again["sanity"]["triggered"]


def test_with_a_key_a_recomputed_digest_does_not_help_the_forger(
    tmp_path: Path, keys: tuple[Path, Path]
) -> None:
    private, _ = keys
    run_dir = run_folder(tmp_path)
    out = tmp_path / "eval"
    honest = evaluate(run_dir, out, tmp_path / "ledger.jsonl", f"ledger_key={private}")
    manifest = json.loads((out / "eval_state" / "manifest.json").read_text())

    def forged_digest(path: Path, value: Any) -> str:  # SHA-256, the forger has no key
        key = path.relative_to(out / "eval_state").with_suffix("").as_posix()
        return unit_digest(manifest["fingerprint"], key, value, None)

    assert tamper(out / "eval_state", forged_digest) == 2
    again = evaluate(run_dir, out, tmp_path / "ledger.jsonl", f"ledger_key={private}")
    assert again["resume"]["rejected"] == 2 and again["resume"]["authenticated"]
    assert again["robust_accuracy"] == honest["robust_accuracy"]


def test_report_md_escapes_what_it_did_not_write(tmp_path: Path) -> None:
    run_dir = run_folder(tmp_path, data_name="<img src=x onerror=alert(1)>")
    report = evaluate(run_dir, tmp_path / "eval", tmp_path / "ledger.jsonl")
    md = Path(report["report_dir"], "report.md").read_text()
    assert "<img" not in md and "&lt;img src=x onerror=alert(1)&gt;" in md


def test_robust_accuracy_does_not_depend_on_the_batch_size(tmp_path: Path) -> None:
    """Per-example random streams: batch sizes 1, 5 and all give the same per-example results
    (random starts of every restart drawn from the example's own id)."""
    from .test_eval_cli import _train_pgd_at

    run_dir = run_folder(tmp_path)
    torch.save(_train_pgd_at().state_dict(), run_dir / "model.pt")  # a model with a spread
    results = [
        evaluate(
            run_dir,
            tmp_path / f"eval_bs{bs}",
            tmp_path / "ledger.jsonl",
            f"batch_size={bs}",
            "attacks.pgd-50x5.restarts=3",
            "threat.eps=0.15",
        )
        for bs in (1, 5, 12)
    ]
    accuracies = {r["robust_accuracy"]["pgd-50x5"] for r in results}
    assert len(accuracies) == 1, accuracies
    assert 0 < next(iter(accuracies)) < results[0]["clean_accuracy"]
