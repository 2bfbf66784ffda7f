"""scripts/compare_auto_lirpa.py without auto_LiRPA: a clear message and exit status 2."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[3] / "scripts" / "compare_auto_lirpa.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("compare_auto_lirpa", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_exits_with_a_clear_message_when_auto_lirpa_is_missing(monkeypatch, capsys):
    script = _load_script()
    # The compatibility shims patch torch/numpy for auto_LiRPA; keep this process untouched.
    monkeypatch.setattr(script, "_compat_shims", lambda: None)
    monkeypatch.setitem(sys.modules, "auto_LiRPA", None)  # `import auto_LiRPA` fails
    with pytest.raises(SystemExit) as exc:
        script.main([])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "auto_LiRPA is not importable" in err
    assert "pip install --no-deps --target" in err
