"""Robustness evaluation: clean, per-attack and worst-case accuracy over a dataset.

:func:`evaluate_attacks` runs every named attack over every batch and returns an
:class:`EvaluationResult` with per-example masks, so a report can show per-attack and per-class
accuracy. An example counts as robust to an attack when it is classified correctly both clean and
after the attack (the convention of Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020); the worst case over all attacks
counts it as robust only if every attack failed on it.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.autoattack import AutoAttack, AutoAttackResult
from advtrain.attacks.base import Attack
from advtrain.modes import model_state_guard
from advtrain.threat import check_labels

AttackFn = Callable[[nn.Module, Tensor, Tensor], Tensor]


@dataclass
class EvaluationResult:
    """Per-example outcome of :func:`evaluate_attacks` (all tensors on the CPU).

    Attributes:
        labels: ``(n,)`` true labels.
        clean_correct: ``(n,)`` bool, classified correctly without attack.
        robust_correct: Per attack name, ``(n,)`` bool: correct clean and after that attack.
        worst_case: ``(n,)`` bool: correct clean and after every attack.
        seconds: Wall-clock time per attack (``"clean"`` for the clean pass).
        details: Per attack name, extra per-example results the attack reports, e.g. an
            :class:`~advtrain.attacks.autoattack.AutoAttackResult` with the robust mask after
            each member of the ensemble (covering all ``n`` examples).
    """

    labels: Tensor
    clean_correct: Tensor
    robust_correct: dict[str, Tensor]
    worst_case: Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def n(self) -> int:
        """Number of evaluated examples."""
        return int(self.labels.numel())

    def _frac(self, mask: Tensor) -> float:
        return float(mask.sum()) / self.n if self.n else float("nan")

    @property
    def clean_accuracy(self) -> float:
        """Fraction classified correctly without attack."""
        return self._frac(self.clean_correct)

    @property
    def robust_accuracy(self) -> dict[str, float]:
        """Robust accuracy per attack."""
        return {name: self._frac(mask) for name, mask in self.robust_correct.items()}

    @property
    def worst_case_accuracy(self) -> float:
        """Fraction robust to every attack (per-example worst case)."""
        return self._frac(self.worst_case)

    @property
    def counts(self) -> dict[str, int]:
        """``n``, the clean count, per-attack robust counts and the worst-case count."""
        out = {"n": self.n, "clean": int(self.clean_correct.sum())}
        out.update({name: int(mask.sum()) for name, mask in self.robust_correct.items()})
        out["worst_case"] = int(self.worst_case.sum())
        return out

    def per_class_accuracy(self, num_classes: int | None = None) -> dict[str, Tensor]:
        """Accuracy per true class for ``clean``, each attack and ``worst_case``.

        Args:
            num_classes: Number of classes; defaults to ``max(label) + 1``.

        Returns:
            Name → float tensor of shape ``(num_classes,)``; NaN for classes with no example.
        """
        k = int(num_classes) if num_classes is not None else int(self.labels.max()) + 1
        totals = torch.bincount(self.labels, minlength=k).double()
        masks = {"clean": self.clean_correct, **self.robust_correct, "worst_case": self.worst_case}
        out = {}
        for name, mask in masks.items():
            hits = torch.bincount(self.labels[mask], minlength=k).double()
            out[name] = torch.where(totals > 0, hits / totals.clamp_min(1), float("nan"))
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly summary: accuracies, counts and times."""
        out: dict[str, Any] = {
            "n": self.n,
            "clean_accuracy": self.clean_accuracy,
            "robust_accuracy": self.robust_accuracy,
            "worst_case_accuracy": self.worst_case_accuracy,
            "counts": self.counts,
            "seconds": dict(self.seconds),
        }
        for name, detail in self.details.items():
            if isinstance(detail, AutoAttackResult):
                out.setdefault("details", {})[name] = {
                    "accuracy_after": detail.accuracies,
                    "seconds": detail.seconds,
                }
        return out


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(data: Any, batch_size: int) -> tuple[Iterable[Any], int | None]:
    """Batches of ``data`` (a ``(x, y)`` pair of tensors or an iterable of batches)."""
    if (
        isinstance(data, Sequence)
        and len(data) == 2
        and isinstance(data[0], Tensor)
        and isinstance(data[1], Tensor)
        and data[0].dim() >= 1
        and data[1].dim() == 1
    ):
        x, y = data
        if x.shape[0] != y.shape[0]:
            raise ValueError(
                f"x and y must hold the same number of examples, got {x.shape[0]} and {y.shape[0]}"
            )
        n = x.shape[0]
        return (
            ((x[i : i + batch_size], y[i : i + batch_size]) for i in range(0, n, batch_size)),
            -(-n // batch_size),
        )
    if isinstance(data, Tensor) or not isinstance(data, Iterable):
        raise TypeError(
            "loader_or_tensors must be a DataLoader (or any iterable of (x, y) batches) or a "
            f"pair (x, y) of tensors, got {type(data).__name__}"
        )
    try:
        total = len(data)  # type: ignore[arg-type]
    except TypeError:
        total = None
    return data, total


def _split(batch: Any) -> tuple[Tensor, Tensor]:
    if isinstance(batch, Mapping):
        if "x" in batch and "y" in batch:
            return batch["x"], batch["y"]
        raise ValueError(f"dict batches need keys 'x' and 'y', got {sorted(batch)}")
    if isinstance(batch, Sequence) and len(batch) >= 2:
        return batch[0], batch[1]
    raise ValueError(
        f"each batch must be a pair (x, y) (extra items are ignored), got {type(batch).__name__}"
    )


def _progress(iterable: Iterable[Any], total: int | None, enabled: bool) -> Iterator[Any]:
    if not enabled:
        yield from iterable
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # plain progress lines
        start = time.perf_counter()
        for i, item in enumerate(iterable):
            yield item
            print(
                f"[evaluate_attacks] batch {i + 1}"
                + (f"/{total}" if total else "")
                + f" ({time.perf_counter() - start:.1f} s)",
                file=sys.stderr,
            )
        return
    yield from tqdm(iterable, total=total, desc="evaluate_attacks", leave=False)


def _expand_aa(result: AutoAttackResult, idx: Tensor, n: int) -> AutoAttackResult:
    """An AutoAttack result on the subset ``idx`` of a batch of ``n`` examples, made full size."""

    def full(mask: Tensor) -> Tensor:
        out = torch.zeros(n, dtype=torch.bool)
        out[idx] = mask
        return out

    # dataclasses.replace keeps every other field (the protocol, how far it escalated...)
    return dataclasses.replace(
        result,
        clean_correct=full(result.clean_correct),
        robust_after={k: full(v) for k, v in result.robust_after.items()},
        robust=full(result.robust),
        seconds=dict(result.seconds),
    )


def _no_examples(attacks: tuple[str, ...]) -> AutoAttackResult:
    empty = torch.zeros(0, dtype=torch.bool)
    return AutoAttackResult(
        attacks=attacks,
        clean_correct=empty,
        robust_after={a: empty for a in attacks},
        robust=empty,
        seconds={a: 0.0 for a in attacks},
    )


def _check_arguments(
    model: nn.Module,
    attacks: Mapping[str, AttackFn],
    device: torch.device | str | None,
    n_examples: int | None,
    batch_size: int,
) -> torch.device:
    """Validates :func:`evaluate_attacks`' arguments; returns the device to run on."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(attacks, Mapping):
        raise TypeError(f"attacks must be a mapping name -> attack, got {type(attacks).__name__}")
    for name, attack in attacks.items():
        if not isinstance(name, str):
            raise TypeError(f"attack names must be strings, got {name!r}")
        if not callable(attack):
            raise TypeError(f"attack {name!r} must be callable as attack(model, x, y)")
    if n_examples is not None and (isinstance(n_examples, bool) or int(n_examples) < 1):
        raise ValueError(f"n_examples must be a positive integer or None, got {n_examples!r}")
    if isinstance(batch_size, bool) or int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    model_device = _model_device(model)
    run_device = torch.device(device) if device is not None else model_device
    if run_device.type != model_device.type or (
        run_device.index is not None
        and model_device.index is not None
        and run_device.index != model_device.index
    ):
        raise ValueError(
            f"device {run_device} differs from the model's device {model_device}; move the "
            "model first (evaluate_attacks never moves or modifies it) or leave device=None"
        )

    return run_device


def _batch_inputs(batch: Any, limit: int | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """The checked ``(x, y)`` of a batch (at most ``limit`` examples), on ``device``."""
    x, y = _split(batch)
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError("batches must hold tensors (x, y)")
    if limit is not None:
        x, y = x[:limit], y[:limit]
    check_labels(y, x.shape[0])
    if not x.is_floating_point() or not bool(torch.isfinite(x).all()):
        raise ValueError(
            "inputs must be finite floating-point tensors (no NaN/inf, no integer pixels: "
            "scale images with x.float() / 255)"
        )
    return x.to(device), y.to(device)


def _clean_pass(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
    """Which examples the model (in eval mode) classifies correctly."""
    with torch.no_grad(), model_state_guard(model, "eval"):
        logits = model(x)
    if logits.dim() != 2 or logits.shape[0] != x.shape[0]:
        raise ValueError(
            f"the model must return logits (batch, classes), got {tuple(logits.shape)}"
        )
    check_labels(y, x.shape[0], num_classes=logits.shape[1])
    return logits.argmax(1) == y


def _attack_batch(
    model: nn.Module,
    attack: AttackFn,
    x: Tensor,
    y: Tensor,
    ids: Tensor,
    correct: Tensor,
    idx: Tensor,
) -> tuple[Tensor, AutoAttackResult | None]:
    """One attack on the correctly classified examples ``idx`` of a batch: the robust mask and, for
    AutoAttack, its per-member result over the whole batch."""
    mask = torch.zeros_like(correct)
    if idx.numel() == 0:  # nothing to attack in this batch
        if isinstance(attack, AutoAttack):
            return mask, _expand_aa(_no_examples(attack.attack_names), idx.cpu(), x.shape[0])
        return mask, None
    if isinstance(attack, Attack):  # per-example random streams
        x_adv = attack(model, x[idx], y[idx], ids=ids[idx])
    else:
        x_adv = attack(model, x[idx], y[idx])
    with torch.no_grad(), model_state_guard(model, "eval"):
        mask[idx] = model(x_adv).argmax(1) == y[idx]
    result = getattr(attack, "last_result", None)
    if isinstance(attack, AutoAttack) and isinstance(result, AutoAttackResult):
        return mask, _expand_aa(result, idx.cpu(), x.shape[0])
    return mask, None


def evaluate_attacks(
    model: nn.Module,
    loader_or_tensors: Iterable[Any] | tuple[Tensor, Tensor],
    attacks: Mapping[str, AttackFn],
    device: torch.device | str | None = None,
    n_examples: int | None = None,
    progress: bool = True,
    batch_size: int = 256,
    first_id: int = 0,
) -> EvaluationResult:
    """Clean, per-attack and worst-case accuracy of ``model`` over a dataset.

    Every attack runs on every batch, on the examples the model classifies correctly (the others
    cannot be robust); predictions are taken with the model in eval mode. The model is never
    modified: its mode, parameters, gradients and buffers are restored after every pass. Attacks
    that record per-example details (:class:`~advtrain.attacks.AutoAttack`'s ``last_result``) have
    them collected in :attr:`EvaluationResult.details`.

    Args:
        model: The classifier, returning logits ``(batch, classes)``.
        loader_or_tensors: A ``DataLoader`` (or any iterable of ``(x, y, ...)`` tuples or
            ``{"x", "y"}`` dicts), or a pair ``(x, y)`` of tensors, batched by ``batch_size``.
        attacks: Name → attack (any ``attack(model, x, y) -> x_adv``); may be empty.
        device: Where to run; defaults to the model's device. The model is not moved, so a
            device other than the model's raises.
        n_examples: Evaluate only the first ``n_examples`` examples.
        progress: Show a progress bar (tqdm if installed, else plain lines on stderr).
        batch_size: Batch size when ``loader_or_tensors`` is a pair of tensors.
        first_id: The id of the first example (``first_id + position`` names each example).
            advtrain attacks draw their random starts and restarts per example from these ids
            (:mod:`advtrain.randomness`), so the numbers do not depend on ``batch_size``.

    Returns:
        An :class:`EvaluationResult`.

    Raises:
        TypeError: If ``model`` is not a module or an attack is not callable.
        ValueError: For a device other than the model's, a non-positive ``n_examples`` or
            ``batch_size``, malformed batches or labels.
    """
    run_device = _check_arguments(model, attacks, device, n_examples, batch_size)
    batches, total = _batches(loader_or_tensors, int(batch_size))
    names = list(attacks)
    labels: list[Tensor] = []
    clean: list[Tensor] = []
    robust: dict[str, list[Tensor]] = {name: [] for name in names}
    aa_details: dict[str, list[AutoAttackResult]] = {}
    seconds = {"clean": 0.0, **{name: 0.0 for name in names}}
    seen = 0
    for batch in _progress(batches, total, progress):
        if n_examples is not None and seen >= n_examples:
            break
        x, y = _batch_inputs(batch, None if n_examples is None else n_examples - seen, run_device)
        ids = torch.arange(first_id + seen, first_id + seen + x.shape[0], device=run_device)
        seen += x.shape[0]

        t0 = time.perf_counter()
        correct = _clean_pass(model, x, y)
        seconds["clean"] += time.perf_counter() - t0
        labels.append(y.cpu())
        clean.append(correct.cpu())

        idx = correct.nonzero().squeeze(1)  # one host sync per batch, shared by the attacks
        for name in names:
            t0 = time.perf_counter()
            mask, detail = _attack_batch(model, attacks[name], x, y, ids, correct, idx)
            if detail is not None:
                aa_details.setdefault(name, []).append(detail)
            robust[name].append(mask.cpu())
            seconds[name] += time.perf_counter() - t0

    if not labels:
        raise ValueError("no examples to evaluate: the loader is empty")
    return _result(labels, clean, robust, aa_details, seconds)


def _result(
    labels: list[Tensor],
    clean: list[Tensor],
    robust: dict[str, list[Tensor]],
    aa_details: dict[str, list[AutoAttackResult]],
    seconds: dict[str, float],
) -> EvaluationResult:
    """The per-batch masks joined into one :class:`EvaluationResult`."""
    clean_all = torch.cat(clean)
    robust_all = {name: torch.cat(masks) for name, masks in robust.items()}
    worst = clean_all.clone()
    for mask in robust_all.values():
        worst &= mask
    return EvaluationResult(
        labels=torch.cat(labels),
        clean_correct=clean_all,
        robust_correct=robust_all,
        worst_case=worst,
        seconds=seconds,
        details={name: AutoAttackResult.concat(parts) for name, parts in aa_details.items()},
    )


__all__ = ["EvaluationResult", "evaluate_attacks"]
