"""Loading model weights safely: ``torch.load(weights_only=True)`` and clear mismatch messages.

A checkpoint file is a pickle; unpickling an untrusted one can run arbitrary code. Everything here
reads checkpoints with ``torch.load(..., weights_only=True)``, which only rebuilds tensors and plain
containers. A checkpoint that needs full unpickling (it stores a whole ``nn.Module``, an optimiser
object, custom classes) is refused with :class:`UnsafeCheckpointError` unless the caller says it
trusts the file (``trust=True``), in which case it is loaded with a loud warning.

Accepted layouts (detected automatically):

* a plain ``state_dict`` (``torch.save(model.state_dict(), path)``; advtrain's ``model.pt``);
* a Lightning checkpoint (``{"state_dict": ..., ...}``; keys carry the LightningModule's prefix,
  e.g. ``model.``, which is stripped);
* a dict wrapping a state dict under ``"model_state_dict"``, ``"model"`` or ``"net"``;
* with ``trust=True`` only: a pickled ``nn.Module``.

Keys are matched to the model after removing the longest common prefix that makes them fit
(``model.``, ``module.`` from DataParallel, ``_orig_mod.`` from ``torch.compile``). A checkpoint
for another architecture raises :class:`CheckpointMismatchError`, naming the missing, unexpected
and wrongly shaped keys.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import re
import sys
import warnings
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.unpickle import load_skipping

_WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or used."""


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that needs full unpickling (``weights_only=False``) and was not trusted."""


class CheckpointMismatchError(CheckpointError):
    """A checkpoint whose keys or shapes do not fit the model.

    Attributes:
        missing: Keys the model needs that the checkpoint lacks.
        unexpected: Keys of the checkpoint the model does not have.
        mismatched: ``(key, checkpoint shape, model shape)`` for keys of different shapes.
    """

    def __init__(
        self,
        message: str,
        missing: list[str],
        unexpected: list[str],
        mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
    ) -> None:
        super().__init__(message)
        self.missing = missing
        self.unexpected = unexpected
        self.mismatched = mismatched


@dataclass
class LoadedCheckpoint:
    """The tensors read from a checkpoint file and how they were read.

    Attributes:
        path: The file.
        state_dict: Name → tensor, as stored (prefixes not yet stripped).
        format: ``"state_dict"``, ``"lightning"``, ``"wrapped:<key>"`` or ``"module"``.
        loaded_with: ``"weights_only"`` or ``"trusted_pickle"``.
        sha256: SHA-256 of exactly the bytes the weights were read from.
        prefix: The key prefix stripped to fit the model (set by :func:`load_weights`).
    """

    path: str
    state_dict: dict[str, Tensor]
    format: str
    loaded_with: str
    sha256: str = ""
    prefix: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


def _tensor_dict(obj: Any) -> dict[str, Tensor] | None:
    if (
        isinstance(obj, Mapping)
        and obj
        and all(isinstance(k, str) and isinstance(v, Tensor) for k, v in obj.items())
    ):
        return dict(obj)
    return None


def _extract(obj: Any, path: str) -> tuple[dict[str, Tensor], str]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict()), "module"
    direct = _tensor_dict(obj)
    if direct is not None:
        return direct, "state_dict"
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            inner = obj.get(key)
            if isinstance(inner, nn.Module):
                return dict(inner.state_dict()), f"wrapped:{key}"
            sd = _tensor_dict(inner)
            if sd is not None:
                lightning = key == "state_dict" and (
                    "pytorch-lightning_version" in obj or "epoch" in obj or "global_step" in obj
                )
                return sd, "lightning" if lightning else f"wrapped:{key}"
        keys = sorted(str(k) for k in obj)[:12]
        raise CheckpointError(
            f"{path} holds a dict without model weights (keys: {keys}); expected a state_dict, "
            f"a Lightning checkpoint, or a dict with one of {list(_WRAPPER_KEYS)}"
        )
    raise CheckpointError(
        f"{path} holds a {type(obj).__name__}, not model weights; save model.state_dict()"
    )


def _check_file(p: Path, what: str) -> None:
    if p.is_dir():
        raise CheckpointError(
            f"{what} {str(p)!r} is a folder, not a checkpoint file; pass the file inside it "
            "(e.g. .../checkpoints/last.ckpt or .../model.pt)"
        )
    if not p.is_file():
        raise CheckpointError(f"{what} {str(p)!r} does not exist (check ckpt_path)")


def load_safely(
    path: str | os.PathLike[str],
    trust: bool = False,
    what: str = "checkpoint",
    skipped: list[str] | None = None,
) -> tuple[Any, str, str]:
    """``torch.load``s a file with ``weights_only=True`` (full unpickling only if ``trust``).

    Returns:
        ``(object, loaded_with, sha256 of the bytes read)``; ``loaded_with`` is
        ``"weights_only"``, ``"weights_only+skipped"`` or ``"trusted_pickle"``.

    With ``skipped`` (a list), a file whose only problem is objects beyond tensors (pickled
    hyper-parameters, a project's own classes) is read with those objects replaced by inert
    placeholders (:mod:`advtrain.unpickle`), their names appended to ``skipped``.

    Raises:
        CheckpointError: A folder, a missing file, or a file torch cannot read (truncated, text,
            a raw pickle), each with its own message.
        UnsafeCheckpointError: A file that stores Python objects beyond tensors (the unsafe
            global named), when ``trust`` is false.
    """
    p = Path(path)
    _check_file(p, what)
    data = p.read_bytes()  # read once: the hash recorded is that of exactly the bytes loaded
    digest = hashlib.sha256(data).hexdigest()
    try:
        return (
            torch.load(io.BytesIO(data), map_location="cpu", weights_only=True),
            "weights_only",
            digest,
        )
    except pickle.UnpicklingError as exc:
        reason = _unpickler_reason(exc)
        unsafe = "global" in reason.lower() or "reduce" in reason.lower()
        if not trust and unsafe and skipped is not None:
            try:
                obj, names = load_skipping(data)
            except Exception:  # not readable even so: report the original problem
                obj, names = None, []
            if obj is not None:
                skipped.extend(names)
                return obj, "weights_only+skipped", digest
        if not trust:
            if not unsafe:
                raise CheckpointError(
                    f"{what} {str(p)!r} is not a readable torch checkpoint: not a torch.save "
                    f"file of tensors (truncated, damaged, a text file or a raw pickle; {reason})"
                ) from exc
            raise UnsafeCheckpointError(
                f"{what} {str(p)!r} cannot be read with torch.load(weights_only=True): it "
                f"stores Python objects beyond tensors and plain containers ({reason}), and "
                "unpickling them can run arbitrary code. If you trust where this file comes from, "
                "pass trust_checkpoint=true (advtrain-eval) or trust=True; better, re-save only "
                "the weights: torch.save(model.state_dict(), path)."
            ) from exc
    except Exception as exc:  # truncated zip, a text file (KeyError), an empty file...
        raise CheckpointError(
            f"{what} {str(p)!r} is not a readable torch checkpoint (truncated, damaged, or not "
            f"a file torch.save wrote): {_first_line(exc)}"
        ) from exc
    banner = (
        f"UNSAFE LOAD: {p} is being fully unpickled (weights_only=False) because "
        "trust_checkpoint=true. This runs any code the file contains; do this only for "
        "files from a trusted source."
    )
    print("!" * 78 + "\n" + banner + "\n" + "!" * 78, file=sys.stderr)
    warnings.warn(banner, UserWarning, stacklevel=3)
    try:
        obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=False)
    except Exception as exc2:  # any unpickling failure: the file is not a checkpoint
        raise CheckpointError(
            f"{what} {str(p)!r} is not a readable torch file: {_first_line(exc2)}"
        ) from exc2
    return obj, "trusted_pickle", digest


def read_checkpoint(path: str | os.PathLike[str], trust: bool = False) -> LoadedCheckpoint:
    """Reads the model weights of a checkpoint file on the CPU.

    Args:
        path: A ``.pt``/``.pth``/``.ckpt`` file (see the module docstring for the layouts).
        trust: Allow full unpickling when ``weights_only=True`` is not enough. Only for files
            from a source you trust: unpickling can run arbitrary code.

    Raises:
        CheckpointError: If the file is missing, unreadable or holds no weights.
        UnsafeCheckpointError: If the file needs full unpickling and ``trust`` is false.
    """
    skipped: list[str] = []
    obj, loaded_with, digest = load_safely(path, trust, skipped=skipped)
    try:
        state, fmt = _extract(obj, str(path))
    except CheckpointError:
        if not skipped:
            raise
        raise UnsafeCheckpointError(  # the weights themselves are inside pickled objects
            f"checkpoint {str(path)!r} keeps its weights inside pickled objects "
            f"({', '.join(skipped[:4])}), which cannot be read without running code. If you "
            "trust where this file comes from, pass trust_checkpoint=true; better, re-save only "
            "the weights: torch.save(model.state_dict(), path)."
        ) from None
    loaded = LoadedCheckpoint(str(path), state, fmt, loaded_with, digest)
    loaded.extra["skipped"] = skipped
    loaded.extra["logged"] = logged_accuracy(obj)
    hparams = obj.get("hyper_parameters") if isinstance(obj, Mapping) else None
    loaded.extra["hyper_parameters"] = dict(hparams) if isinstance(hparams, Mapping) else {}
    return loaded


def logged_accuracy(obj: Any) -> dict[str, float]:
    """The clean accuracies a Lightning checkpoint's ``ModelCheckpoint`` monitored (best score),
    e.g. ``{"val/acc": 0.985}``; robust or verified accuracies are left out."""
    out: dict[str, float] = {}
    callbacks = obj.get("callbacks") if isinstance(obj, Mapping) else None
    if not isinstance(callbacks, Mapping):
        return out
    for state in callbacks.values():
        if not isinstance(state, Mapping):
            continue
        monitor, score = state.get("monitor"), state.get("best_model_score")
        if not isinstance(monitor, str) or score is None:
            continue
        name = monitor.lower()
        if "acc" not in name or any(w in name for w in ("robust", "adv", "verified", "cert")):
            continue
        try:
            value = float(score)
        except (TypeError, ValueError):
            continue
        if 0.0 <= value <= 1.0:
            out[monitor] = value
    return out


def check_training_checkpoint(path: str | os.PathLike[str], module: nn.Module) -> None:
    """Checks, before Lightning touches it, that ``path`` is a Lightning training checkpoint of
    ``module`` that ``torch.load(weights_only=True)`` reads (what ``advtrain-train`` resumes).

    Raises:
        CheckpointError: For a folder, a missing, truncated or non-torch file, a file that holds
            only weights (advtrain's ``model.pt``), or another architecture (keys named);
            :class:`UnsafeCheckpointError` for a file that would need unpickling.
    """
    obj, _, _ = load_safely(path, trust=False, what="ckpt_path")
    if (
        not isinstance(obj, Mapping)
        or "state_dict" not in obj
        or not ("pytorch-lightning_version" in obj or "loops" in obj)
    ):
        raise CheckpointError(
            f"ckpt_path {str(path)!r} is not a Lightning training checkpoint (it holds "
            + (
                "only model weights, like advtrain's model.pt"
                if _tensor_dict(obj)
                else "no Lightning training state"
            )
            + "): resume from the run's checkpoints/last.ckpt; to evaluate these weights use "
            "advtrain-eval ckpt_path=..."
        )
    state = _tensor_dict(obj["state_dict"]) or {}
    found = _differences(state, module.state_dict())  # exact keys: Lightning loads strictly
    if any(found):
        raise CheckpointMismatchError(
            f"ckpt_path {str(path)!r} was written for another model than this run's "
            f"({_describe_differences(*found)}): resume with the model= settings of the run "
            "that wrote it",
            *found,
        )


def _unpickler_reason(exc: BaseException) -> str:
    """torch's own reason (``Unsupported global: GLOBAL x.Y ...``) from a weights-only failure."""
    text = " ".join(str(exc).split())
    marker = "WeightsUnpickler error:"
    if marker in text:
        text = text.split(marker, 1)[1].strip()
        return text.split(" was not an allowed global")[0].split(" Check the documentation")[0]
    found = re.search(r"(Trying to load unsupported GLOBAL \S+)", text)
    if found:  # torch >= 2.6 names a blocked module's global this way
        return found.group(1).replace("Trying to load unsupported", "Unsupported global:")
    return _first_line(exc)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _best_prefix(keys: list[str], wanted: set[str]) -> str:
    """The prefix whose removal makes the most checkpoint keys fit the model's keys."""
    direct = len(wanted & set(keys))
    votes: Counter[str] = Counter()
    for k in keys:
        for w in wanted:
            if len(k) > len(w) and k.endswith(w) and k[-len(w) - 1] == ".":
                votes[k[: -len(w)]] += 1
    if not votes:
        return ""
    prefix, count = votes.most_common(1)[0]
    return prefix if count > direct else ""


def _summarise(names: list[str], limit: int = 8) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", … ({len(names) - limit} more)" if len(names) > limit else "")


Differences = tuple[list[str], list[str], list[tuple[str, tuple[int, ...], tuple[int, ...]]]]


def _differences(state: Mapping[str, Tensor], target: Mapping[str, Tensor]) -> Differences:
    """``(missing, unexpected, mismatched)`` keys of ``state`` against ``target``; mismatched
    as ``(key, checkpoint shape, model shape)``."""
    wanted = set(target)
    missing = sorted(wanted - set(state))
    unexpected = sorted(set(state) - wanted)
    mismatched = [
        (k, tuple(state[k].shape), tuple(target[k].shape))
        for k in sorted(wanted & set(state))
        if tuple(state[k].shape) != tuple(target[k].shape)
    ]
    return missing, unexpected, mismatched


def _describe_differences(
    missing: list[str],
    unexpected: list[str],
    mismatched: list[tuple[str, tuple[int, ...], tuple[int, ...]]],
) -> str:
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s): {_summarise(missing)}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s): {_summarise(unexpected)}")
    if mismatched:
        shapes = [f"{k} (checkpoint {list(a)} vs model {list(b)})" for k, a, b in mismatched]
        parts.append(f"{len(mismatched)} key(s) with another shape: {_summarise(shapes, 6)}")
    return "; ".join(parts)


def match_state_dict(
    model: nn.Module, state: Mapping[str, Tensor], source: str = "checkpoint"
) -> tuple[dict[str, Tensor], str]:
    """Fits ``state``'s keys to ``model`` (stripping a prefix) or raises naming the differences.

    Returns:
        ``(state_dict for model.load_state_dict, stripped prefix)``.

    Raises:
        CheckpointMismatchError: Missing, unexpected or differently shaped keys.
    """
    target = model.state_dict()
    prefix = _best_prefix(list(state), set(target))
    fitted = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    found = _differences(fitted, target)
    if any(found):
        raise CheckpointMismatchError(
            f"{source} does not fit the model {type(model).__name__}"
            + (f" (after removing the key prefix {prefix!r})" if prefix else "")
            + ": "
            + _describe_differences(*found)
            + ". Choose the model config the checkpoint was trained with (e.g. model=small_cnn "
            "model.width=...), or point run_dir= at the training run so its config is used.",
            *found,
        )
    return fitted, prefix


def load_weights(
    model: nn.Module, path: str | os.PathLike[str], trust: bool = False
) -> LoadedCheckpoint:
    """Reads ``path`` safely (see :func:`read_checkpoint`) and loads it into ``model`` strictly.

    Raises:
        CheckpointError, UnsafeCheckpointError, CheckpointMismatchError: See above.
    """
    ckpt = read_checkpoint(path, trust=trust)
    fitted, prefix = match_state_dict(model, ckpt.state_dict, f"checkpoint {str(path)!r}")
    model.load_state_dict(fitted, strict=True)
    ckpt.prefix = prefix
    return ckpt


__all__ = [
    "CheckpointError",
    "CheckpointMismatchError",
    "LoadedCheckpoint",
    "UnsafeCheckpointError",
    "check_training_checkpoint",
    "load_safely",
    "load_weights",
    "logged_accuracy",
    "match_state_dict",
    "read_checkpoint",
]
