"""scripts/bench/compare_auto_lirpa.py without auto_LiRPA: a clear message and exit status 2."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


def test_exits_with_a_clear_message_when_auto_lirpa_is_missing(monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(ROOT))
    script = importlib.import_module("scripts.bench.compare_auto_lirpa")
    # The compatibility shims patch torch/numpy for auto_LiRPA; keep this process untouched.
    monkeypatch.setattr(script, "_compat_shims", lambda: None)
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)  # `import auto_LiRPA` fails
    with pytest.raises(SystemExit) as exc:
        script.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "auto_LiRPA is not importable" in err
    assert "pip install --no-deps --target" in err
