"""AutoAttack: an ensemble of diverse parameter-free attacks, worst case per example.

References:
    Croce & Hein, "Reliable evaluation of adversarial robustness with an ensemble of diverse
    parameter-free attacks", ICML 2020. "standard" version: APGD-CE (100 iterations, no restarts),
    APGD-T (targeted DLR, 9 target classes, 100 iterations), FAB-T (9 target classes) and Square
    (5000 queries), each run only on the examples no earlier attack fooled.
    Croce & Hein, "Mind the Box: l1-APGD for Sparse Adversarial Attacks on Image Classifiers",
    ICML 2021 (the L1 version: l1-APGD-CE with 5 restarts and l1-APGD-T with 5 target classes,
    both with the 3·eps → 2·eps → eps schedule).
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from advtrain.attacks.apgd import APGD
from advtrain.attacks.base import Attack
from advtrain.attacks.ensemble_run import (
    CHECK_FRACTION,
    CHECK_MIN_QUERIES,
    ESCALATION_RINGS,
    EnsembleRun,
    ranked_robust,
    ring_size,
)
from advtrain.modes import BNMode, model_state_guard
from advtrain.validation import check_positive_int

VERSIONS: tuple[str, ...] = ("standard", "plus", "fast", "rapid", "custom")
#: The rapid protocol's members, its gradient-masking check and the member it escalates to: the
#: standard version's Square (Linf and L2).
RAPID_NAMES: tuple[str, ...] = ("apgd-ce", "apgd-t-malt", "square-check", "square")

ATTACK_NAMES: tuple[str, ...] = ("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")


@dataclass
class AutoAttackResult:
    """Per-example outcome of one AutoAttack call (or of several, see :meth:`concat`).

    Attributes:
        attacks: Names of the attacks in the order they ran.
        clean_correct: Boolean ``(n,)``, the clean input is classified correctly.
        robust_after: For each attack, boolean ``(n,)``: still classified correctly after this
            attack and every earlier one (cumulative, as in the reference's log).
        robust: Boolean ``(n,)``: no attack fooled the example (the worst case).
        seconds: Wall-clock time spent in each attack.
        protocol: The version that ran (``"rapid"``, ``"standard"``, ...).
        escalated: ``"rapid"`` only: its Square check fooled an example the white-box members
            missed, so Square ran with all its queries too.
        escalation_coverage: ``"rapid"`` only: the fraction of the still-robust examples (after
            the white-box members) that the escalation's Square covered (0 when it did not run;
            1: all of them, as in the standard version).
    """

    attacks: tuple[str, ...]
    clean_correct: Tensor
    robust_after: dict[str, Tensor]
    robust: Tensor
    seconds: dict[str, float] = field(default_factory=dict)
    protocol: str = ""
    escalated: bool = False
    escalation_coverage: float = 0.0

    @property
    def n(self) -> int:
        """Number of examples."""
        return int(self.clean_correct.numel())

    @property
    def clean_accuracy(self) -> float:
        """Fraction of examples classified correctly without attack."""
        return float(self.clean_correct.float().mean()) if self.n else float("nan")

    @property
    def robust_accuracy(self) -> float:
        """Fraction of examples no attack fooled (AutoAttack's robust accuracy)."""
        return float(self.robust.float().mean()) if self.n else float("nan")

    @property
    def counts(self) -> dict[str, int]:
        """Correct counts: ``clean``, after each attack (cumulative), and ``robust``."""
        out = {"clean": int(self.clean_correct.sum())}
        out.update({name: int(mask.sum()) for name, mask in self.robust_after.items()})
        out["robust"] = int(self.robust.sum())
        return out

    @property
    def accuracies(self) -> dict[str, float]:
        """:attr:`counts` divided by :attr:`n`."""
        return {k: v / self.n if self.n else float("nan") for k, v in self.counts.items()}

    def fooled_by(self, name: str) -> Tensor:
        """Boolean ``(n,)``: the examples attack ``name`` was the first to fool."""
        if name not in self.robust_after:
            raise KeyError(f"no attack named {name!r}; ran {list(self.attacks)}")
        before = self.clean_correct
        for attack in self.attacks:
            if attack == name:
                return before & ~self.robust_after[name]
            before = self.robust_after[attack]
        raise KeyError(name)  # pragma: no cover

    @classmethod
    def concat(cls, results: Sequence[AutoAttackResult]) -> AutoAttackResult:
        """Joins the results of several batches (same attacks) into one."""
        if not results:
            raise ValueError("concat needs at least one result")
        attacks = results[0].attacks
        if any(r.attacks != attacks for r in results):
            raise ValueError("cannot concat results of different attack lists")
        return cls(
            attacks=attacks,
            clean_correct=torch.cat([r.clean_correct for r in results]),
            robust_after={a: torch.cat([r.robust_after[a] for r in results]) for a in attacks},
            robust=torch.cat([r.robust for r in results]),
            seconds={a: sum(r.seconds.get(a, 0.0) for r in results) for a in attacks},
            protocol=results[0].protocol,
            escalated=any(r.escalated for r in results),
            escalation_coverage=max((r.escalation_coverage for r in results), default=0.0),
        )


class AutoAttack(Attack):
    """AutoAttack (Croce & Hein, ICML 2020): run attacks in sequence, worst case per example.

    Each attack runs only on the examples that are still classified correctly, so an example
    counts as robust only if every attack fails on it. After a call, :attr:`last_result` holds an
    :class:`AutoAttackResult` with the clean-correct mask, the robust mask after each attack and
    the final worst-case mask, so a report can show per-attack accuracy.

    Versions (Linf and L2):

    * ``"standard"``: APGD-CE (100 iterations, no restarts), APGD-T (9 targets, 100 iterations),
      FAB-T (9 targets), Square (``n_queries`` queries, ``p_init=0.8``).
    * ``"plus"`` (AA+): APGD-CE and APGD-DLR (5 restarts each), FAB (5 restarts), Square
      (``n_queries`` queries, 5 restarts), APGD-T (9 targets), FAB-T (9 targets).
    * ``"fast"``: APGD-CE and APGD-T with 3 targets (cheap enough for training-time validation;
      it is not the published evaluation).
    * ``"rapid"``: the standard version's verdict at a fraction of its time: APGD-CE, then APGD-T
      on 4 targets ranked by MALT (the nearest linearised boundary, Melamed et al. 2024) instead
      of 9 by logit, then a gradient-masking check: Square (a fifth of ``n_queries``, at least
      500) on the tenth of the still-robust examples (at least 16) that the white-box members
      came closest to fooling (smallest DLR margin), where a black-box attack's extra successes
      concentrate. If Square fools any of them, a black-box attack finds what the white-box ones
      miss and the protocol escalates to the standard version's black-box member, Square with all
      ``n_queries``, in rings of the same ranking: the closest quarter, then the next quarter,
      then the rest, each ring only if the one before fooled an example beyond the part already
      covered (:attr:`AutoAttackResult.escalated` and ``escalation_coverage`` say how far it
      went; a masked model goes all the way). The ranking is made within each call (batch);
      ``always_escalate`` skips the check's verdict (the evaluation pipeline sets it on the
      other batches once one batch escalated). The standard version's other members
      (APGD-T on 9 targets, FAB-T) are white-box: where gradients are in doubt they add nothing,
      and where the model checks say gradients cannot be trusted the evaluation pipeline runs the
      whole standard ensemble instead (:meth:`escalated`).
    * ``"custom"``: the attacks given in ``attacks``.

    L1 (as in the reference): ``"standard"`` is l1-APGD-CE (5 restarts) and l1-APGD-T (5 targets),
    both with the 3·eps → 2·eps → eps schedule; ``"plus"`` adds l1-APGD-DLR (5 restarts);
    ``"fast"`` is l1-APGD-CE (1 restart) and l1-APGD-T (3 targets).

    Examples that no attack fooled are returned as the first attack's output (APGD-CE's point
    of highest loss); fooled ones as the adversarial example that fooled them; misclassified ones
    unchanged. Target counts above the model's ``classes - 1`` are lowered to it; targeted DLR
    attacks are skipped (with a warning) for models with fewer than 4 classes.

    Args:
        eps: Radius of the ball, in input units.
        norm: ``"linf"``, ``"l2"`` or ``"l1"``.
        version: ``"standard"``, ``"plus"``, ``"fast"`` or ``"custom"``.
        attacks: With ``version="custom"``: a sequence of names from
            ``("apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square")`` (configured as in
            ``"standard"``) and/or :class:`~advtrain.attacks.base.Attack` instances; must be
            ``None`` otherwise.
        bounds: ``(low, high)`` of valid inputs.
        seed: Seed passed to every attack (each keeps its own generator).
        n_queries: Square's query budget (paper: 5000).
        bn_mode: BatchNorm behaviour during the attacks (default ``"eval"``).
        verbose: Print the robust accuracy and time after each attack.

    Attributes:
        always_escalate: ``"rapid"`` only: escalate whatever the check finds.
    """

    supported_norms = ("linf", "l2", "l1")
    name = "autoattack"

    def __init__(
        self,
        eps: float = 8 / 255,
        norm: str = "linf",
        version: str = "standard",
        attacks: Sequence[str | Attack] | None = None,
        bounds: Sequence[float] = (0.0, 1.0),
        seed: int | None = None,
        n_queries: int = 5000,
        bn_mode: BNMode = "eval",
        verbose: bool = False,
    ) -> None:
        super().__init__(eps=eps, norm=norm, bounds=bounds, seed=seed, bn_mode=bn_mode)
        if not isinstance(version, str) or version.lower() not in VERSIONS:
            raise ValueError(f"version must be one of {list(VERSIONS)}, got {version!r}")
        self.version = version.lower()
        self.n_queries = check_positive_int(n_queries, "n_queries")
        self.verbose = bool(verbose)
        if self.version == "custom":
            if attacks is None or isinstance(attacks, (str, Attack)) or len(attacks) == 0:
                raise ValueError(
                    "version='custom' needs attacks: a non-empty list of names from "
                    f"{list(ATTACK_NAMES)} and/or Attack instances"
                )
            self.attacks = [self._build(a) for a in attacks]
        else:
            if attacks is not None:
                raise ValueError(
                    f"attacks is only used with version='custom'; version={self.version!r} "
                    "fixes its own attacks (pass version='custom' to choose them)"
                )
            self.attacks = self._preset(self.version)
        self.check: Attack | None = None
        self.escalation: list[Attack] = []
        if self.version == "rapid" and self.norm != "l1":
            # Square on the examples the white-box members came closest to fooling (where its
            # successes concentrate), with a fifth of its queries: its cost on a CPU is its
            # sequential queries more than its batch. Escalation: Square with all its queries,
            # in rings of the same ranking.
            queries = max(CHECK_MIN_QUERIES, self.n_queries // 5)
            self.check = self._make("square", n_queries=queries)
            self.escalation = [self._make("square")]
        names = [a.name for a in self.attacks]
        self.attack_names = tuple(
            n if names.count(n) == 1 else f"{n}#{names[: i + 1].count(n)}"
            for i, n in enumerate(names)
        )
        if self.check is not None:
            self.attack_names = RAPID_NAMES
        self.always_escalate = False
        self.last_result: AutoAttackResult | None = None

    # -- configuration --------------------------------------------------------------------------
    def _common(self) -> dict:
        return {
            "eps": self.eps,
            "norm": self.norm,
            "bounds": self.bounds,
            "seed": self.seed,
            "bn_mode": self.bn_mode,
        }

    def _make(self, name: str, **overrides: object) -> Attack:
        """One attack by name, configured as in the standard version unless overridden."""
        kw = self._common()
        l1 = self.norm == "l1"
        if name in ("apgd-ce", "apgd-dlr"):
            settings = {"loss": name[5:], "steps": 100, "restarts": 5 if l1 else 1}
            if l1:
                settings["large_eps"] = True
            settings.update(overrides)
            return APGD(**kw, **settings)  # type: ignore[arg-type]
        if name == "apgd-t":
            settings = {"targeted": True, "steps": 100, "n_target_classes": 5 if l1 else 9}
            if l1:
                settings["large_eps"] = True
            settings.update(overrides)
            return APGD(**kw, **settings)  # type: ignore[arg-type]
        if name in ("fab", "fab-t"):
            from advtrain.attacks.fab import FAB  # lazy: optional member of the ensemble

            settings = {"steps": 100, "restarts": 1, "targeted": name == "fab-t"}
            if name == "fab-t":
                settings["n_target_classes"] = 9
            settings.update(overrides)
            return FAB(**kw, **settings)  # type: ignore[arg-type]
        if name == "square":
            from advtrain.attacks.square import Square  # lazy: optional member of the ensemble

            settings = {"n_queries": self.n_queries, "p_init": 0.8, "restarts": 1}
            settings.update(overrides)
            return Square(**kw, **settings)  # type: ignore[arg-type]
        raise ValueError(f"unknown attack {name!r}; choose from {list(ATTACK_NAMES)}")

    def _build(self, spec: str | Attack) -> Attack:
        if isinstance(spec, Attack):
            return spec
        if not isinstance(spec, str):
            raise TypeError(
                f"attacks must hold names or Attack instances, got {type(spec).__name__}"
            )
        return self._make(spec.lower())

    def _preset(self, version: str) -> list[Attack]:
        if version == "rapid":
            malt = self._make("apgd-t", n_target_classes=4, target_ranking="malt")
            return [self._make("apgd-ce"), malt]
        if self.norm == "l1":
            if version == "fast":
                return [self._make("apgd-ce", restarts=1), self._make("apgd-t", n_target_classes=3)]
            attacks = [self._make("apgd-ce"), self._make("apgd-t")]
            if version == "plus":
                attacks.insert(1, self._make("apgd-dlr"))
            return attacks
        if version == "standard":
            return [
                self._make("apgd-ce"),
                self._make("apgd-t"),
                self._make("fab-t"),
                self._make("square"),
            ]
        if version == "plus":
            return [
                self._make("apgd-ce", restarts=5),
                self._make("apgd-dlr", restarts=5),
                self._make("fab", restarts=5),
                self._make("square", restarts=5),
                self._make("apgd-t"),
                self._make("fab-t"),
            ]
        return [self._make("apgd-ce"), self._make("apgd-t", n_target_classes=3)]

    @property
    def eps(self) -> float:
        """Radius of the ball; setting it updates every attack of the ensemble (schedulable)."""
        return self.threat.eps

    @eps.setter
    def eps(self, value: float) -> None:
        Attack.eps.fset(self, value)  # type: ignore[attr-defined]
        for _, attack in self.members():
            attack.eps = value

    def members(self) -> list[tuple[str, Attack]]:
        """Every attack with its report name, in order (``"rapid"``: the check and the
        escalation members too)."""
        attacks = list(getattr(self, "attacks", []))
        if getattr(self, "check", None) is not None:
            attacks += [self.check, *self.escalation]
        return list(zip(getattr(self, "attack_names", ()), attacks, strict=False))

    def reseed(self, seed: int | None) -> None:
        """Restarts the random streams of the ensemble and of every attack from ``seed``."""
        super().reseed(seed)
        for _, attack in self.members():
            attack.reseed(seed)

    def state_dict(self) -> dict[str, Any]:
        """The ensemble's state and every attack's (seeds and generator states)."""
        state = super().state_dict()
        state["attacks"] = {n: a.state_dict() for n, a in self.members()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores :meth:`state_dict`'s output."""
        super().load_state_dict(state)
        for name, attack in self.members():
            if name in state.get("attacks", {}):
                attack.load_state_dict(state["attacks"][name])

    def escalation_attack(self) -> AutoAttack:
        """This ``"rapid"`` protocol with ``always_escalate`` set: what runs on the batches
        whose check did not fire once another batch's did (the white-box members run again,
        with the same per-example draws, then the escalation's rings)."""
        if self.check is None:
            raise ValueError(f"only version='rapid' escalates, this is {self.version!r}")
        forced = copy.deepcopy(self)
        forced.always_escalate = True
        return forced

    def escalated(self) -> AutoAttack:
        """The standard version with this one's settings (what ``"rapid"`` escalates to when the
        model checks say white-box attacks cannot be trusted)."""
        return AutoAttack(
            eps=self.eps,
            norm=self.norm,
            version="standard",
            bounds=self.bounds,
            seed=self.seed,
            n_queries=self.n_queries,
            bn_mode=self.bn_mode,
        )

    def extra_repr(self) -> str:
        return f"version={self.version!r}, attacks={list(self.attack_names)}"

    # -- running --------------------------------------------------------------------------------
    @staticmethod
    def _fit_targets(attack: Attack, num_classes: int) -> Attack | None:
        """A copy with fewer target classes when the model has too few; ``None`` to skip."""
        if not getattr(attack, "targeted", False) or not hasattr(attack, "n_target_classes"):
            return attack
        if isinstance(attack, APGD) and attack.loss == "dlr" and num_classes < 4:
            warnings.warn(
                f"{attack.name} skipped: the targeted DLR loss needs at least 4 classes, the "
                f"model has {num_classes}",
                stacklevel=4,
            )
            return None
        if attack.n_target_classes <= num_classes - 1:  # type: ignore[attr-defined]
            return attack
        fitted = copy.copy(attack)
        fitted.n_target_classes = num_classes - 1  # type: ignore[attr-defined]
        return fitted

    def __call__(self, model: nn.Module, x: Tensor, y: Tensor, ids: Tensor | None = None) -> Tensor:
        """Runs the ensemble; see the class docstring. Sets :attr:`last_result`. ``ids``: one id
        per example for per-example random draws (see :meth:`Attack.__call__`)."""
        if self.eps != 0:
            return super().__call__(model, x, y, ids=ids)
        # eps = 0: no attack can change anything, but the result still reports clean accuracy.
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.validate(x, y)
        with torch.inference_mode(False), torch.no_grad(), model_state_guard(model, self.bn_mode):
            logits = model(x.detach().clone() if x.is_inference() else x.detach())
            self.check_logits(logits, y)
            correct = (logits.argmax(1) == y).cpu()
        self.last_result = AutoAttackResult(
            attacks=self.attack_names,
            clean_correct=correct,
            robust_after={n: correct.clone() for n in self.attack_names},
            robust=correct.clone(),
            seconds={n: 0.0 for n in self.attack_names},
        )
        return x.detach().clone()

    def perturb(self, model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        if x.dim() != 4 and any(a.name == "square" for _, a in self.members()):
            raise ValueError(
                f"Square needs image batches (batch, channels, height, width), got shape "
                f"{tuple(x.shape)}; reshape the inputs or use version='fast' or 'custom'"
            )
        with torch.no_grad():
            logits = model(x)
        self.check_logits(logits, y)
        run = EnsembleRun(model, x, y, logits.argmax(1) == y, logits.shape[1], self.verbose)
        members = self.members()
        main = members[: len(self.attacks)]
        for name, attack in main:
            self._member(run, name, attack)
        escalated, coverage = False, 0.0
        if self.check is not None:  # "rapid": Square on the closest calls; escalate if it fools
            escalated, coverage = self._check_and_escalate(run)
        self.last_result = AutoAttackResult(
            attacks=self.attack_names,
            clean_correct=run.correct.to("cpu", copy=True),
            robust_after=run.robust_after,
            robust=run.robust.to("cpu", copy=True),
            seconds=run.seconds,
            protocol=self.version,
            escalated=escalated,
            escalation_coverage=coverage,
        )
        # Every attack returns points inside the ball and box; projecting again could move a
        # boundary point back across the decision boundary.
        return run.x_adv

    def _check_and_escalate(self, run: EnsembleRun) -> tuple[bool, float]:
        """The rapid protocol's Square check on the closest calls, then the escalation's rings
        (see the class docstring). Returns ``(escalated, coverage)``."""
        check, escalation = self.check, self.escalation[0]
        assert check is not None
        ranked = ranked_robust(run)
        n = ranked.numel()
        covered = ring_size(n, CHECK_FRACTION)
        before = int(run.robust.sum())
        self._member(run, RAPID_NAMES[2], check, only=ranked[:covered].sort().values)
        if n == 0 or not (self.always_escalate or int(run.robust.sum()) < before):
            run.skip(RAPID_NAMES[3])
            return False, 0.0
        t0, start = time.perf_counter(), 0  # the first ring attacks the check set again
        for fraction in ESCALATION_RINGS:
            end = ring_size(n, fraction)
            ring = ranked[start:end]
            ring = ring[run.robust[ring]].sort().values
            outer = ranked[covered:end]
            outer_robust = int(run.robust[outer].sum())
            self._attack(run, escalation, ring)
            start = covered = end
            if end == n or int(run.robust[outer].sum()) == outer_robust:
                break  # nothing fooled beyond what was covered: the successes are inside
        run.done(RAPID_NAMES[3], time.perf_counter() - t0)
        return True, covered / n

    def _member(
        self, run: EnsembleRun, name: str, attack: Attack, only: Tensor | None = None
    ) -> None:
        """Runs one member on the still-robust examples (or those of ``only``)."""
        t0 = time.perf_counter()
        self._attack(run, attack, run.robust.nonzero().squeeze(1) if only is None else only)
        run.done(name, time.perf_counter() - t0)

    def _attack(self, run: EnsembleRun, attack: Attack, todo: Tensor) -> None:
        """Runs ``attack`` on the examples ``todo`` and records what it fooled."""
        runner = self._fit_targets(attack, run.num_classes)
        if todo.numel() > 0 and runner is not None:
            call = self._call_draws  # per-example draws follow the examples into members
            ids = None if call is None or call.ids is None else call.ids[todo]
            with runner.example_ids(ids, run.x.device):
                cand = runner.perturb(run.model, run.x[todo], run.y[todo])
            with torch.no_grad():
                fooled = run.model(cand).argmax(1) != run.y[todo]
            if run.first:
                run.x_adv[todo] = cand
            else:
                run.x_adv[todo[fooled]] = cand[fooled]
            run.robust[todo[fooled]] = False
            run.first = False


__all__ = [
    "ATTACK_NAMES",
    "RAPID_NAMES",
    "VERSIONS",
    "AutoAttack",
    "AutoAttackResult",
]
