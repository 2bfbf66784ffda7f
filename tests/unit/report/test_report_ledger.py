"""The hash-chained ledger: appends chain, verify finds every kind of tampering and names it."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from advtrain.report.ledger import GENESIS, append_entry, entry_hash, verify_ledger


def _setup(tmp_path: Path, entries: int = 3) -> Path:
    ledger = tmp_path / "ledger.jsonl"
    for i in range(entries):
        run = tmp_path / f"run{i}"
        run.mkdir()
        (run / "report.json").write_text(json.dumps({"i": i}))
        (run / "model.pt").write_bytes(bytes([i]) * 100)
        append_entry(
            ledger,
            {"report": run / "report.json", "checkpoint": run / "model.pt"},
            summary={"clean_accuracy": 0.5 + i / 10},
        )
    return ledger


def _lines(ledger: Path) -> list[dict]:
    return [json.loads(line) for line in ledger.read_text().splitlines()]


def test_entries_chain_and_untouched_ledger_verifies(tmp_path: Path) -> None:
    ledger = _setup(tmp_path)
    entries = _lines(ledger)
    assert [e["index"] for e in entries] == [0, 1, 2]
    assert entries[0]["prev_sha256"] == GENESIS
    for prev, cur in itertools.pairwise(entries):
        assert cur["prev_sha256"] == prev["sha256"] == entry_hash(prev)
    assert entries[1]["files"]["report"]["path"] == "run1/report.json"  # relative to the ledger
    result = verify_ledger(ledger)
    assert result.ok and result.entries == 3 and result.files_checked == 6
    assert result.head == entries[-1]["sha256"]
    assert "OK" in result.format(str(ledger))


def test_changed_file_is_named(tmp_path: Path) -> None:
    ledger = _setup(tmp_path)
    model = tmp_path / "run1" / "model.pt"
    data = bytearray(model.read_bytes())
    data[7] ^= 0xFF
    model.write_bytes(bytes(data))
    (tmp_path / "run2" / "report.json").unlink()
    result = verify_ledger(ledger)
    assert not result.ok and len(result.problems) == 2
    assert "entry 1 (line 2): file checkpoint" in result.problems[0]
    assert "altered" in result.problems[0]
    assert "entry 2 (line 3): file report" in result.problems[1]
    assert "missing" in result.problems[1]
    assert verify_ledger(ledger, check_files=False).ok


def test_edited_entry_breaks_its_hash_and_the_chain(tmp_path: Path) -> None:
    ledger = _setup(tmp_path)
    lines = ledger.read_text().splitlines()
    entry = json.loads(lines[1])
    entry["summary"]["clean_accuracy"] = 0.99
    lines[1] = json.dumps(entry)
    ledger.write_text("\n".join(lines) + "\n")
    problems = verify_ledger(ledger).problems
    assert len(problems) == 1 and "entry 1 (line 2): content altered" in problems[0]
    # Re-hashing the edited entry does not help: the next entry's link breaks.
    entry["sha256"] = entry_hash(entry)
    lines[1] = json.dumps(entry)
    ledger.write_text("\n".join(lines) + "\n")
    problems = verify_ledger(ledger).problems
    assert len(problems) == 1 and "entry 2 (line 3): chain broken" in problems[0]


@pytest.mark.parametrize("how", ["delete_middle", "swap", "garbage"])
def test_removed_reordered_or_garbled_entries_are_found(tmp_path: Path, how: str) -> None:
    ledger = _setup(tmp_path)
    lines = ledger.read_text().splitlines()
    if how == "delete_middle":
        del lines[1]
    elif how == "swap":
        lines[0], lines[1] = lines[1], lines[0]
    else:
        lines[2] = lines[2][:-5]
    ledger.write_text("\n".join(lines) + "\n")
    result = verify_ledger(ledger)
    assert not result.ok
    text = " ".join(result.problems)
    expected = {"delete_middle": "chain broken", "swap": "chain broken", "garbage": "line 3"}
    assert expected[how] in text


def test_append_refuses_missing_files_and_a_corrupt_tail(tmp_path: Path) -> None:
    ledger = _setup(tmp_path, entries=1)
    with pytest.raises(ValueError, match="is not a file"):
        append_entry(ledger, {"report": tmp_path / "nope.json"})
    with ledger.open("a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match="advtrain-eval verify"):
        append_entry(ledger, {"report": tmp_path / "run0" / "report.json"})
    assert not verify_ledger(tmp_path / "missing.jsonl").ok
