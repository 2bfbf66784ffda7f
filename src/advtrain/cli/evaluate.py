"""``advtrain-eval``: evaluate a trained model's robustness; write evidence a reviewer can trust.

Usage::

    advtrain-eval run_dir=outputs/2025-01-01/12-00-00              # an advtrain-train run
    advtrain-eval ckpt_path=model.pt model=small_cnn threat.eps=0.2  # a state_dict or .ckpt
    advtrain-eval ... attacks=pgd n_examples=500                    # PGD-50x5, 500 examples
    advtrain-eval ... attacks=[autoattack,pgd] certify.smoothing.sigma=0.25
    advtrain-eval ... output_dir=DIR     # the same command again resumes an interrupted run
                                         # (or hydra.run.dir=DIR: output_dir follows it)
    advtrain-eval verify outputs/ledger.jsonl [--no-files]
    advtrain-eval compare A/report.json B/report.json [--out DIR]
    advtrain-eval schema                 # prints the JSON schema of report.json

The evaluation (config ``conf/eval.yaml``):

* weights are read with ``torch.load(weights_only=True)`` (:mod:`advtrain.checkpoints`); a pickled
  checkpoint is refused unless ``trust_checkpoint=true``; a checkpoint of another architecture
  fails with the missing / unexpected / mis-shaped keys named;
* clean accuracy, each attack's robust accuracy (AutoAttack standard by default, with the accuracy
  after each of its members) and the per-example worst case at the threat model ``threat.eps``;
* robust accuracy along ``eps_grid`` (each attack and the worst case);
* verified accuracy by IBP / CROWN (``certify.bounds``; "not supported" is recorded for models
  with layers bound propagation cannot handle) and randomized-smoothing certified accuracy at
  ``certify.smoothing.radii`` when ``certify.smoothing.sigma`` is set;
* sanity flags (:mod:`advtrain.attacks.checks`): gradient masking, randomness, softmax outputs,
  black-box beating white-box, inconsistent eps curves; a prominent warning when they say the
  white-box numbers cannot be trusted;
* ``report.json`` (schema: :mod:`advtrain.report.schema`), ``report.md``, a self-contained
  ``report.html`` and the figures, with the SHA-256 of the checkpoint, the resolved config and the
  evaluated data, versions, git commit and device; one entry appended to the hash-chained ledger
  (``ledger=``, :mod:`advtrain.report.ledger`).

Resuming: every unit of work (one attack at one eps on one batch, one certificate on one batch) is
saved in ``output_dir/eval_state`` as it finishes (:mod:`advtrain.cli.eval_state`); rerunning with
the same ``output_dir`` skips finished units and ends with the same numbers.

Subcommands: Hydra owns the command line, so ``verify``, ``compare`` and ``schema`` are recognised
as the first argument and dispatched before Hydra sees it.
"""

from __future__ import annotations

import copy
import datetime as _dt
import hashlib
import io
import math
import os
import sys
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn

from advtrain.checkpoints import CheckpointError, load_weights
from advtrain.cli.config import coerce_fractions, register_resolvers
from advtrain.cli.errors import exit_on_write_error
from advtrain.cli.eval_commands import compare_main, keygen_main, schema_main, verify_main
from advtrain.cli.eval_data import EvalData, contamination, load_split
from advtrain.cli.eval_state import UnitStore
from advtrain.cli.schemas import check_seed
from advtrain.cli.trust import check_config_targets
from advtrain.data.base import tensors_sha256
from advtrain.models.view import ClassifierView
from advtrain.report import (
    SCHEMA_VERSION,
    environment,
    sha256_file,
    sha256_text,
    summary_table,
    write_report,
)
from advtrain.report.folders import reserve_report_dir
from advtrain.report.ledger import append_entry, canonical_json
from advtrain.report.schema import check_report
from advtrain.report.signing import load_private_key, mac_key
from advtrain.report.writer import _json_safe

DATA_HASH_METHOD = (
    "advtrain.data.base.tensors_sha256(x, y): per tensor its dtype name, shape, then values as "
    "contiguous little-endian bytes; examples in test-set index order (first n_examples)"
)
#: Sanity flags that mean gradient-based (white-box) robust accuracy cannot be trusted.
WHITE_BOX_UNTRUSTED = (
    "randomized_model",
    "probability_outputs",
    "zero_gradients",
    "black_box_beats_white_box",
    "model_checks_failed",
)
_BOUND_METHODS = ("ibp", "crown", "crown_ibp")
#: The report's sanity warning when the checks were switched off.
NOT_CHECKED = (
    "the sanity checks were not run (sanity.enabled=false): nothing checked these white-box "
    "numbers for gradient masking, randomness or saturated outputs"
)

UnitHook = Callable[[str], None]


# -- configuration ------------------------------------------------------------------------------
def _apply_run_dir(cfg: DictConfig) -> None:
    """Fills model, data, threat model and weights from an advtrain-train run folder."""
    if not cfg.get("run_dir"):
        return
    run = Path(str(cfg.run_dir))
    conf = run / "config_resolved.yaml"
    if not conf.is_file():
        raise ValueError(
            f"run_dir={run} has no config_resolved.yaml; point run_dir at an advtrain-train "
            "output folder, or give ckpt_path= and model= instead"
        )
    rc = OmegaConf.load(conf)
    if cfg.get("use_run_config", True):
        # A delivered folder's config is data: only allowed targets are ever instantiated.
        for key in ("model", "data"):
            check_config_targets(
                rc.get(key),
                f"run_dir={run}: config_resolved.yaml",
                allow=list(cfg.get("allow_targets") or []),
                trust=bool(cfg.get("trust_config")),
                path=key,
            )
        cfg.model = rc.model
        cfg.data = rc.data
    attack = rc.get("attack") or {}
    if cfg.threat.get("eps") is None and attack.get("eps") is not None:
        cfg.threat.eps = float(attack["eps"])
    if cfg.threat.get("norm") is None and attack.get("norm") is not None:
        cfg.threat.norm = str(attack["norm"])
    if not cfg.get("ckpt_path"):
        weights = run / "model.pt"
        if not weights.is_file():
            raise ValueError(f"run_dir={run} has no model.pt; pass ckpt_path= explicitly")
        cfg.ckpt_path = str(weights)


def _check_targets(cfg: DictConfig) -> None:
    """Typos in any ``_target_`` node (``attacks.pgd-50x5.stpes=5``) fail before any work."""
    try:
        from advtrain.cli.schemas import check_targets
    except ImportError:  # pragma: no cover - the config checks are optional
        return
    for key in ("model", "data", "attacks"):
        node = cfg.get(key)
        if node is not None:
            check_targets(node, key)


def add_python_path(folders: Sequence[str]) -> None:
    """Puts ``folders`` first on ``sys.path`` (a user's own packages, ``python_path=``)."""
    for folder in reversed([str(Path(str(f)).resolve()) for f in folders]):
        if not Path(folder).is_dir():
            raise ValueError(f"python_path: {folder} is not a folder")
        if folder not in sys.path:
            sys.path.insert(0, folder)


def _load_data(cfg: DictConfig) -> tuple[Any, EvalData]:
    """The data module and the examples to evaluate (:mod:`advtrain.cli.eval_data`)."""
    try:
        datamodule = instantiate(cfg.data.module, _convert_="all")
    except Exception as err:
        raise ValueError(
            f"data.module could not be built ({type(err).__name__}: {err}); check "
            "data.module._target_ and its arguments (and python_path= for your own package)"
        ) from None
    n_req = cfg.get("n_examples")
    if n_req is not None and (isinstance(n_req, bool) or int(n_req) < 1):
        raise ValueError(f"n_examples must be a positive integer or null (all), got {n_req!r}")
    data = load_split(
        datamodule,
        str(cfg.data.get("split", "test")),
        int(n_req) if n_req is not None else None,
        [float(b) for b in cfg.threat.bounds],
        cfg.data.get("normalization", "auto"),
    )
    return datamodule, data


def _data_checks(
    cfg: DictConfig,
    datamodule: Any,
    data: EvalData,
    clean_acc: float,
    logged: Mapping[str, float],
    flags: list[dict[str, Any]],
) -> dict[str, Any]:
    """Appends the data flags: test examples found in the training data, and a clean accuracy
    far below the accuracy the checkpoint's own run logged. Returns the contamination record."""
    settings = _container(cfg.get("contamination") or {})
    record: dict[str, Any] = {"checked": False, "overlap": 0, "n": int(data.y.numel())}
    if settings.get("enabled", True):
        record = contamination(data, datamodule, settings.get("max_train_examples"))
    if record["overlap"]:
        flags.append(
            {
                "code": "test_data_in_training_data",
                "triggered": True,
                "message": f"{record['overlap']} of the {record['n']} evaluated examples also "
                f"occur in the training split ({record['train_examples']} examples compared): "
                "the model was trained on them, so every accuracy here overstates it",
                "advice": "evaluate a split disjoint from the training data (data.split=, or the "
                "split the training run held out)",
                "details": record,
            }
        )
    for monitor, score in logged.items():
        if clean_acc < score - 0.10:
            flags.append(
                {
                    "code": "clean_accuracy_below_training_log",
                    "triggered": True,
                    "message": f"clean accuracy {clean_acc:.1%} is far below the {monitor} "
                    f"{score:.1%} the checkpoint's own run logged",
                    "advice": "check that the data is the run's (split, normalisation: "
                    "data.normalization=) and that model= is its architecture",
                    "details": {"monitor": monitor, "logged": score, "clean": clean_acc},
                }
            )
    return record


def _save_weights(net: nn.Module, output_dir: Path) -> tuple[Path, str]:
    """Saves the evaluated weights as ``model.pt`` (or ``model-<sha>.pt`` where another
    ``model.pt``, which an earlier ledger entry may name, is there); returns path and SHA-256."""
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    path = output_dir / "model.pt"
    if path.exists() and sha256_file(path) != digest:
        path = output_dir / f"model-{digest[:12]}.pt"
    if not path.exists():
        path.write_bytes(data)
    return path, digest


def _signing_key(cfg: DictConfig) -> Any:
    """The ledger's Ed25519 private key (``ledger_key=`` or ``$ADVTRAIN_LEDGER_KEY``), if any."""
    path = cfg.get("ledger_key") or os.environ.get("ADVTRAIN_LEDGER_KEY")
    return load_private_key(str(path)) if path else None


def _rejected_state_flag(count: int, authenticated: bool) -> dict[str, Any]:
    kind = "HMAC" if authenticated else "SHA-256"
    return {
        "code": "resumed_state_rejected",
        "triggered": True,
        "message": f"{count} stored unit(s) of the interrupted evaluation failed their {kind} "
        "check (edited, copied from another evaluation, or damaged) and were recomputed: the "
        "numbers here are computed, not read back",
        "advice": "find out who or what changed output_dir/eval_state; with ledger_key= set, "
        "units are authenticated by a key only the evaluator holds",
        "details": {"rejected": count, "authenticated": authenticated},
    }


def _threat(cfg: DictConfig) -> dict[str, Any]:
    if cfg.threat.get("norm") is None:
        cfg.threat.norm = "linf"
    norm = str(cfg.threat.norm)
    if norm not in ("linf", "l2", "l1"):
        raise ValueError(f"threat.norm must be linf, l2 or l1, got {norm!r}")
    if cfg.threat.get("eps") is None:
        raise ValueError(
            "threat.eps is required (e.g. threat.eps=0.2 or threat.eps=8/255), or give "
            "run_dir= so the training run's attack.eps is used"
        )
    eps = float(cfg.threat.eps)
    if not (math.isfinite(eps) and eps >= 0):
        raise ValueError(f"threat.eps must be a finite number >= 0, got {eps}")
    bounds = [float(b) for b in cfg.threat.bounds]
    return {"norm": norm, "eps": eps, "bounds": bounds}


def _device(spec: str | None) -> torch.device:
    if spec in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(str(spec))
    except RuntimeError as err:
        raise ValueError(f"device={spec!r} is not a device ({err}); use auto, cpu or cuda") from (
            None
        )
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(
            f"device={spec} but this PyTorch has no usable CUDA device "
            f"(torch {torch.__version__}, torch.cuda.is_available() is False): use device=cpu "
            "or device=auto"
        )
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(f"device={spec} but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def _container(node: Any) -> Any:
    if isinstance(node, DictConfig) or OmegaConf.is_list(node):
        return OmegaConf.to_container(node, resolve=True)
    return node


def _grid_value(factor: float, eps: float) -> float:
    """``factor * eps`` to 12 significant digits; exactly ``eps`` for a factor of 1."""
    value = factor * eps
    return eps if math.isclose(value, eps, rel_tol=1e-9) else float(f"{value:.12g}")


def _eps_key(eps: float) -> str:
    return f"{eps:.10g}"


def _progress(total: int, initial: int, desc: str, enabled: bool) -> Any:
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm ships with Lightning
        return None
    return tqdm(total=total, initial=initial, desc=desc, leave=False, dynamic_ncols=True)


class _Runner:
    """Runs units through the store: reuse finished ones, compute and save the others."""

    def __init__(self, store: UnitStore, seed: int, progress: bool, hook: UnitHook | None) -> None:
        self.store = store
        self.seed = seed
        self.progress = progress
        self.hook = hook
        self.seconds: dict[str, float] = {}

    def phase(
        self,
        prefix: str,
        batches: Sequence[int],
        compute: Callable[[int], dict[str, Any]],
        desc: str,
        timing: str,
    ) -> list[dict[str, Any]]:
        keys = [f"{prefix}/batch_{b:05d}" for b in batches]
        done = {k: self.store.get(k) for k in keys}
        bar = _progress(len(keys), sum(v is not None for v in done.values()), desc, self.progress)
        out = []
        try:
            for b, key in zip(batches, keys, strict=True):
                res = done[key]
                if res is None:
                    torch.manual_seed((self.seed * 1_000_003 + zlib.crc32(key.encode())) % 2**63)
                    t0 = time.perf_counter()
                    res = compute(b)
                    res["seconds"] = time.perf_counter() - t0
                    self.store.put(key, res)
                    if bar is not None:
                        bar.update(1)
                    if self.hook is not None:
                        self.hook(key)
                out.append(res)
                self.seconds[timing] = self.seconds.get(timing, 0.0) + float(res["seconds"])
        finally:
            if bar is not None:
                bar.close()
        return out


def _frac(mask: Tensor) -> float:
    return float(mask.sum()) / mask.numel() if mask.numel() else float("nan")


def _cat(results: list[dict[str, Any]], key: str) -> Tensor:
    return torch.cat([r[key] for r in results])


# -- the pieces of the evaluation ---------------------------------------------------------------
def _build_attacks(
    cfg: DictConfig, threat: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    attacks: dict[str, Any] = {}
    specs: dict[str, dict[str, Any]] = {}
    for name, node in (cfg.get("attacks") or {}).items():
        if node is None:
            continue
        spec = _container(node)
        attack = instantiate(node, _convert_="all")
        if not callable(attack):
            raise TypeError(f"attacks.{name} did not build a callable attack: {attack!r}")
        eps = getattr(attack, "eps", None)
        if eps is not None and not math.isclose(float(eps), threat["eps"], abs_tol=1e-12):
            raise ValueError(
                f"attacks.{name}.eps={eps} differs from threat.eps={threat['eps']}; the attacks "
                "follow the threat model: set threat.eps instead"
            )
        norm = getattr(attack, "norm", None)
        if norm is not None and str(norm) != threat["norm"]:
            raise ValueError(
                f"attacks.{name}.norm={norm} differs from threat.norm={threat['norm']}; set "
                "threat.norm instead"
            )
        attacks[str(name)] = attack
        specs[str(name)] = spec
    return attacks, specs


def _attack_unit(
    model: nn.Module, attack: Any, name: str, eps: float, x: Tensor, y: Tensor, first_id: int
) -> dict[str, Any]:
    """One attack at one eps on one batch; random draws per example (test-set index), so the
    numbers do not depend on the batch size."""
    from advtrain.attacks.autoattack import AutoAttackResult
    from advtrain.evaluation import evaluate_attacks

    fresh = copy.deepcopy(attack)
    if hasattr(fresh, "eps"):
        fresh.eps = eps
    res = evaluate_attacks(
        model, (x, y), {name: fresh}, progress=False, batch_size=len(x), first_id=first_id
    )
    out: dict[str, Any] = {"robust": res.robust_correct[name].cpu()}
    detail = res.details.get(name)
    if isinstance(detail, AutoAttackResult):
        out["members"] = {m: detail.robust_after[m].cpu() for m in detail.attacks}
        out["member_names"] = list(detail.attacks)
    return out


def _bound_fn(method: str) -> Callable[..., tuple[Tensor, Tensor]]:
    from advtrain.certify import crown_bounds, interval_bounds

    if method == "ibp":
        return interval_bounds
    if method == "crown":
        return lambda *a, **k: crown_bounds(*a, intermediate="crown", **k)
    return lambda *a, **k: crown_bounds(*a, intermediate="ibp", **k)


def _bounds_support(
    model: nn.Module, method: str, x: Tensor, y: Tensor, threat: Mapping[str, Any]
) -> str | None:
    """``None`` if ``method`` handles ``model``; otherwise the reason it does not."""
    if threat["norm"] not in ("linf", "l2"):
        return f"bound propagation certifies linf and l2 balls, not {threat['norm']}"
    try:
        with torch.no_grad():
            _bound_fn(method)(
                model, x[:1], 0.0, norm=threat["norm"], bounds=threat["bounds"], labels=y[:1]
            )
    except (TypeError, NotImplementedError) as exc:
        return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return None


def _bounds_unit(
    model: nn.Module,
    method: str,
    eps: float,
    x: Tensor,
    y: Tensor,
    threat: Mapping[str, Any],
    chunk: int,
) -> dict[str, Any]:
    from advtrain.certify import verified

    masks = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xb, yb = x[i : i + chunk], y[i : i + chunk]
            lower, _ = _bound_fn(method)(
                model, xb, eps, norm=threat["norm"], bounds=threat["bounds"], labels=yb
            )
            masks.append(verified(lower, yb).cpu())
    return {"verified": torch.cat(masks)}


def _smoothing_unit(
    model: nn.Module,
    num_classes: int,
    scfg: Mapping[str, Any],
    seed: int,
    batch: int,
    x: Tensor,
) -> dict[str, Any]:
    from advtrain.certify import Smooth

    smooth = Smooth(model, num_classes, float(scfg["sigma"]), seed=seed + batch)
    res = smooth.certify_batch(
        x, int(scfg["n0"]), int(scfg["n"]), float(scfg["alpha"]), int(scfg["batch_size"])
    )
    return {
        "predict": torch.tensor([r.prediction for r in res], dtype=torch.long),
        "radius": torch.tensor([r.radius for r in res], dtype=torch.float64),
    }


def _sanity_model(model: nn.Module, x: Tensor, y: Tensor) -> list[dict[str, Any]]:
    from advtrain.attacks.checks import check_model

    try:
        return [f.to_dict() for f in check_model(model, x, y)]
    except (RuntimeError, ValueError, TypeError) as exc:
        return [
            {
                "code": "model_checks_failed",
                "triggered": True,
                "message": f"The model checks could not run ({exc}); input gradients may not be "
                "computable, so gradient-based attacks may not work on this model.",
                "advice": "Make sure the model is differentiable end to end (no detach, no "
                "torch.no_grad inside forward), or evaluate it with black-box attacks only.",
                "details": {},
            }
        ]


def _sanity_results(
    clean: float,
    per_attack: Mapping[str, float],
    grid: Mapping[float, float] | None,
    margin: float,
) -> list[dict[str, Any]]:
    from advtrain.attacks.checks import check_results

    return [f.to_dict() for f in check_results(clean, per_attack, grid, margin=margin)]


def _white_box_warning(flags: list[dict[str, Any]]) -> str | None:
    bad = [f["code"] for f in flags if f["triggered"] and f["code"] in WHITE_BOX_UNTRUSTED]
    if not bad:
        return None
    return (
        f"Sanity checks fired ({', '.join(bad)}): the gradients that white-box attacks (PGD, "
        "APGD, FAB) follow are masked, random or saturated, so their robust accuracy overstates "
        "the model's robustness, possibly by far. Treat these numbers as upper bounds; rely on "
        "the worst case including black-box attacks, adaptive attacks, and certified accuracy."
    )


def _per_class(labels: Tensor, masks: Mapping[str, Tensor], num_classes: int) -> dict[str, Any]:
    support = torch.bincount(labels, minlength=num_classes)
    acc: dict[str, list[float | None]] = {}
    for name, mask in masks.items():
        hits = torch.bincount(labels[mask], minlength=num_classes)
        acc[name] = [
            float(h) / float(s) if int(s) > 0 else None
            for h, s in zip(hits.tolist(), support.tolist(), strict=True)
        ]
    return {"classes": list(range(num_classes)), "support": support.tolist(), "accuracy": acc}


# -- the run ------------------------------------------------------------------------------------
def run(
    cfg: DictConfig,
    model: nn.Module | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """Evaluates as configured, writes the report and the ledger entry; returns the report.

    Args:
        cfg: A composed ``eval`` config (``compose("eval", [...], output_dir=...)``).
        model: Optional architecture to load the weights into (programmatic use, e.g. a model
            class no config describes); a copy is used, the argument is never modified. Without
            ``ckpt_path`` its current weights are evaluated (saved as ``output_dir/model.pt``).
        on_unit: Called with the key of each unit of work after it is computed and saved.

    Raises:
        ValueError: Bad settings; :class:`~advtrain.checkpoints.CheckpointError` for a checkpoint
            that cannot be loaded safely or does not fit the model.
    """
    register_resolvers()
    coerce_fractions(cfg)
    wall = time.perf_counter()
    add_python_path(cfg.get("python_path") or [])
    _apply_run_dir(cfg)
    _check_targets(cfg)
    threat = _threat(cfg)
    output_dir = Path(str(cfg.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    device = _device(cfg.get("device"))
    seed = check_seed(cfg.seed)
    timings: dict[str, float] = {}

    # Model and weights.
    t0 = time.perf_counter()
    if model is not None:
        net = copy.deepcopy(model).cpu()
        model_desc: Any = f"passed to run(): {type(model).__module__}.{type(model).__qualname__}"
    else:
        net = instantiate(cfg.model, _convert_="all")
        model_desc = _container(cfg.model)
    ckpt_logged: dict[str, float] = {}
    if cfg.get("ckpt_path"):
        ckpt = load_weights(net, str(cfg.ckpt_path), trust=bool(cfg.get("trust_checkpoint")))
        ckpt_path = Path(str(cfg.ckpt_path))
        ckpt_sha = ckpt.sha256
        ckpt_info = {"format": ckpt.format, "loaded_with": ckpt.loaded_with}
        if ckpt.extra.get("skipped"):
            ckpt_info["skipped"] = list(ckpt.extra["skipped"])
            print(
                f"[advtrain-eval] read the weights of {ckpt_path}; skipped what needs code to "
                f"unpickle: {', '.join(ckpt.extra['skipped'])}",
                file=sys.stderr,
            )
        ckpt_logged = dict(ckpt.extra.get("logged") or {})
    elif model is not None:
        ckpt_path, ckpt_sha = _save_weights(net, output_dir)
        ckpt_info = {"format": "state_dict", "loaded_with": "weights_only"}
    else:
        raise ValueError(
            "nothing to evaluate: give ckpt_path= (a state_dict, model.pt or Lightning .ckpt, "
            "with model= its architecture) or run_dir= (an advtrain-train output folder)"
        )
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)

    # Data (pixels; the model seen through its normalisation where the data module normalises).
    datamodule, data = _load_data(cfg)
    n_req = cfg.get("n_examples")
    x, y = data.x, data.y
    n = int(y.numel())
    if data.normalization is not None:
        net = ClassifierView(net, data.normalization).to(device).eval()
    data_sha = tensors_sha256(x, y)
    with torch.no_grad():
        k_out = net(x[:1].to(device)).shape[1]
    num_classes = int(cfg.data.get("num_classes") or k_out)
    if num_classes != k_out:
        raise ValueError(
            f"the model has {k_out} outputs but data.num_classes is {num_classes}; is model= "
            "the right architecture for this data?"
        )
    timings["load"] = time.perf_counter() - t0

    # What to run.
    attacks, specs = _build_attacks(cfg, threat)
    bs = int(cfg.get("batch_size", 256))
    if bs < 1:
        raise ValueError(f"batch_size must be >= 1, got {bs}")
    batches = list(range(-(-n // bs)))

    def xb(b: int, count: int | None = None) -> tuple[Tensor, Tensor]:
        lo = b * bs
        hi = min(lo + bs, n if count is None else count)
        return x[lo:hi].to(device), y[lo:hi].to(device)

    grid_cfg = cfg.get("eps_grid") or {}
    factors = [float(f) for f in (grid_cfg.get("factors") or [])]
    if any(not (math.isfinite(f) and f >= 0) for f in factors):
        raise ValueError(
            f"eps_grid.factors must be finite numbers >= 0 (multiples of threat.eps), got {factors}"
        )
    grid_eps = sorted({_grid_value(f, threat["eps"]) for f in factors})
    grid_attacks = [str(a) for a in (grid_cfg.get("attacks") or list(attacks))]
    unknown = [a for a in grid_attacks if a not in attacks]
    if unknown:
        raise ValueError(f"eps_grid.attacks names unknown attacks {unknown}; have {list(attacks)}")
    bcfg = (cfg.get("certify") or {}).get("bounds") or {}
    methods = [str(m) for m in (bcfg.get("methods") or [])]
    bad = [m for m in methods if m not in _BOUND_METHODS]
    if bad:
        raise ValueError(f"certify.bounds.methods: unknown {bad}; choose from {_BOUND_METHODS}")
    bound_eps = (
        sorted(set(grid_eps) | {threat["eps"]}) if bcfg.get("on_eps_grid") else [threat["eps"]]
    )
    scfg = _container((cfg.get("certify") or {}).get("smoothing") or {})
    smoothing_on = scfg.get("sigma") is not None
    sanity_cfg = _container(cfg.get("sanity") or {})
    settings: dict[str, Any] = {
        "seed": seed,
        "batch_size": bs,
        "n_examples": n,
        "n_examples_requested": n_req,
        "device": str(device),
        "threat_model": threat,
        "attacks": specs,
        "eps_grid": {"factors": factors, "eps": grid_eps, "attacks": grid_attacks},
        "certify": {
            "bounds": {
                "methods": methods,
                "eps": bound_eps,
                "batch_size": int(bcfg.get("batch_size", 64)),
            },
            "smoothing": scfg if smoothing_on else None,
        },
        "sanity": sanity_cfg,
        "model": model_desc,
        "data": {
            "split": data.split,
            "normalization": None if data.normalization is None else data.normalization.as_dict(),
        },
    }
    env = environment()
    fingerprint = sha256_text(
        canonical_json(
            {
                "settings": settings,
                "checkpoint": ckpt_sha,
                "data": data_sha,
                "code": [env.get("advtrain"), env.get("git_commit")],
            }
        )
    )
    signing_key = _signing_key(cfg)
    store = UnitStore(
        output_dir / "eval_state",
        fingerprint,
        settings,
        bool(cfg.get("resume", True)),
        mac=None if signing_key is None else mac_key(signing_key),
    )
    runner = _Runner(store, seed, bool(cfg.get("progress", True)), on_unit)

    # Model sanity checks (cheap, deterministic; not stored).
    flags: list[dict[str, Any]] = []
    k_sanity = 0
    if sanity_cfg.get("enabled", True):
        t0 = time.perf_counter()
        k_sanity = min(n, int(sanity_cfg.get("n_examples", 256)))
        flags += _sanity_model(net, x[:k_sanity].to(device), y[:k_sanity].to(device))
        timings["sanity"] = time.perf_counter() - t0
        for f in flags:
            if f["triggered"]:
                print(f"[advtrain-eval] WARNING {f['code']}: {f['message']}", file=sys.stderr)

    # Clean pass.
    def clean_unit(b: int) -> dict[str, Any]:
        xs, ys = xb(b)
        with torch.no_grad():
            pred = net(xs).argmax(1)
        return {"clean": (pred == ys).cpu()}

    clean = _cat(runner.phase("clean", batches, clean_unit, "clean", "clean"), "clean")

    # Attacks at every eps (the threat model's eps first).
    eps_list = [threat["eps"]] + [e for e in grid_eps if e != threat["eps"]]
    robust: dict[float, dict[str, Tensor]] = {}
    members: dict[str, dict[str, Tensor]] = {}
    member_order: dict[str, list[str]] = {}
    attack_seconds: dict[str, float] = {}
    for eps in eps_list:
        names = list(attacks) if eps == threat["eps"] else grid_attacks
        robust[eps] = {}
        for name in names:
            prefix = f"attack/{name}/eps={_eps_key(eps)}"
            before = runner.seconds.get("attacks", 0.0)
            results = runner.phase(
                prefix,
                batches,
                lambda b, name=name, eps=eps: _attack_unit(
                    net, attacks[name], name, eps, *xb(b), first_id=b * bs
                ),
                f"{name} eps={eps:.4g}",
                "attacks",
            )
            robust[eps][name] = _cat(results, "robust") & clean
            if eps == threat["eps"]:
                attack_seconds[name] = runner.seconds.get("attacks", 0.0) - before
                if results and "members" in results[0]:
                    member_order[name] = list(results[0]["member_names"])
                    members[name] = {
                        m: torch.cat([r["members"][m] for r in results]) & clean
                        for m in member_order[name]
                    }

    main = robust[threat["eps"]]
    worst = clean.clone()
    for mask in main.values():
        worst &= mask

    # Certificates by bound propagation.
    bounds_report: dict[str, Any] = {}
    for method in methods:
        reason = _bounds_support(net, method, *xb(0), threat)
        if reason is not None:
            bounds_report[method] = {"supported": False, "reason": reason}
            continue
        accs, counts = [], []
        before = runner.seconds.get(f"bounds_{method}", 0.0)
        for eps in bound_eps:
            results = runner.phase(
                f"bounds/{method}/eps={_eps_key(eps)}",
                batches,
                lambda b, method=method, eps=eps: _bounds_unit(
                    net, method, eps, *xb(b), threat, int(bcfg.get("batch_size", 64))
                ),
                f"{method} eps={eps:.4g}",
                f"bounds_{method}",
            )
            ver = _cat(results, "verified") & clean
            accs.append(_frac(ver))
            counts.append(int(ver.sum()))
        bounds_report[method] = {
            "supported": True,
            "reason": None,
            "eps": bound_eps,
            "accuracy": accs,
            "counts": counts,
            "at_threat_eps": accs[bound_eps.index(threat["eps"])],
            "seconds": runner.seconds.get(f"bounds_{method}", 0.0) - before,
        }

    # Randomized smoothing.
    smoothing_report: dict[str, Any] | None = None
    if smoothing_on:
        k_s = n if scfg.get("n_examples") is None else min(n, int(scfg["n_examples"]))
        s_batches = list(range(-(-k_s // bs)))
        results = runner.phase(
            f"smoothing/sigma={_eps_key(float(scfg['sigma']))}",
            s_batches,
            lambda b: _smoothing_unit(net, num_classes, scfg, seed, b, xb(b, k_s)[0]),
            f"smoothing σ={float(scfg['sigma']):g}",
            "smoothing",
        )
        pred = _cat(results, "predict")
        radius = _cat(results, "radius")
        correct = pred == y[:k_s]
        radii = [float(r) for r in scfg.get("radii") or [0.0]]

        def cert_at(r: float) -> Tensor:
            return correct & (radius >= r)

        top = max([*radii, float(radius.max()) if radius.numel() else 0.0]) * 1.05 or 1.0
        curve_r = [top * i / 127 for i in range(128)]
        smoothing_report = {
            "sigma": float(scfg["sigma"]),
            "n0": int(scfg["n0"]),
            "n": int(scfg["n"]),
            "alpha": float(scfg["alpha"]),
            "seed": seed,
            "radii": radii,
            "accuracy": [_frac(cert_at(r)) for r in radii],
            "counts": [int(cert_at(r).sum()) for r in radii],
            "n_examples": k_s,
            "abstain_rate": _frac(pred == -1),
            "curve": {"radius": curve_r, "accuracy": [_frac(cert_at(r)) for r in curve_r]},
            "at_threat_eps": _frac(cert_at(threat["eps"])) if threat["norm"] == "l2" else None,
            "seconds": runner.seconds.get("smoothing", 0.0),
        }

    # Numbers.
    clean_acc = _frac(clean)
    robust_acc = {name: _frac(mask) for name, mask in main.items()}
    robust_acc["worst_case"] = _frac(worst)
    counts = {"n": n, "clean": int(clean.sum())}
    counts.update({name: int(mask.sum()) for name, mask in main.items()})
    counts["worst_case"] = int(worst.sum())
    attacks_report: dict[str, Any] = {}
    for name, spec in specs.items():
        entry: dict[str, Any] = {
            "target": str(spec.get("_target_", type(attacks[name]).__qualname__)),
            "params": {k: v for k, v in spec.items() if k != "_target_"},
            "description": repr(attacks[name]),
            "accuracy": robust_acc[name],
            "correct": counts[name],
            "seconds": attack_seconds.get(name, 0.0),
        }
        if name in members:
            entry["members"] = [
                {
                    "name": m,
                    "accuracy_after": _frac(members[name][m]),
                    "correct_after": int(members[name][m].sum()),
                }
                for m in member_order[name]
            ]
        attacks_report[name] = entry
    grid_acc: dict[str, list[float]] = {name: [] for name in grid_attacks}
    grid_acc["worst_case"] = []
    for eps in grid_eps:
        w = clean.clone()
        for name in grid_attacks:
            grid_acc[name].append(_frac(robust[eps][name]))
            w &= robust[eps][name]
        grid_acc["worst_case"].append(_frac(w))

    summary_cert: dict[str, float | None] = {}
    for method, res in bounds_report.items():
        if res["supported"]:
            summary_cert[f"{method} @ eps={threat['eps']:.4g}"] = res["at_threat_eps"]
    if smoothing_report:
        for r, a in zip(smoothing_report["radii"], smoothing_report["accuracy"], strict=True):
            summary_cert[f"smoothing σ={smoothing_report['sigma']:g} @ r={r:g}"] = a
    best_name, best = None, None
    for method, res in bounds_report.items():
        if res["supported"] and (best is None or res["at_threat_eps"] > best):
            best_name, best = method, res["at_threat_eps"]
    s_at = smoothing_report["at_threat_eps"] if smoothing_report else None
    if s_at is not None and (best is None or s_at > best):
        best_name, best = "smoothing", s_at
    gap = {
        "eps": threat["eps"],
        "empirical": robust_acc["worst_case"],
        "certified": best,
        "certificate": best_name,
        "gap": None if best is None else robust_acc["worst_case"] - best,
    }

    # Result sanity checks.
    if sanity_cfg.get("enabled", True):
        per_attack: dict[str, float] = {}
        for name in main:
            if name in members:
                for m in member_order[name]:
                    key = m if m not in per_attack else f"{m}@{name}"
                    per_attack[key] = _frac(members[name][m])
            else:
                per_attack[name] = robust_acc[name]
        grid_worst = (
            dict(zip(grid_eps, grid_acc["worst_case"], strict=True))
            if grid_eps and grid_attacks
            else None
        )
        flags += _sanity_results(
            clean_acc, per_attack, grid_worst, float(sanity_cfg.get("margin", 0.03))
        )
    if store.rejected:
        flags.append(_rejected_state_flag(store.rejected, store.mac is not None))
    overlap = _data_checks(cfg, datamodule, data, clean_acc, ckpt_logged, flags)
    for f in flags:
        f["white_box_untrusted"] = bool(f["triggered"] and f["code"] in WHITE_BOX_UNTRUSTED)
    warning = _white_box_warning(flags)
    checked = bool(sanity_cfg.get("enabled", True))
    # not checked is not trustworthy: None, with the reason, where the checks were switched off
    trustworthy: bool | None = (warning is None) if checked else None
    if not checked:
        warning = NOT_CHECKED

    timings.update(runner.seconds)
    timings["total_wall"] = time.perf_counter() - wall
    # a folder of its own for this report: never over files an earlier ledger entry names
    report_dir = reserve_report_dir(output_dir)
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    config_file = report_dir / "config_resolved.yaml"
    config_file.write_text(config_yaml)
    data_cfg = cfg.get("data") or {}
    report: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "kind": "evaluation",
        "created": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "data": {
            "name": str(data_cfg.get("name", "data")),
            "split": data.split,
            "num_classes": num_classes,
            "hash_method": DATA_HASH_METHOD,
            "source": data.source,
            "contamination": overlap,
        },
        "clean_accuracy": clean_acc,
        "robust_accuracy": robust_acc,
        "counts": counts,
        "threat_model": threat,
        "n_examples": n,
        "attacks": attacks_report,
        "eps_curve": [
            {"eps": e, "accuracy": a} for e, a in zip(grid_eps, grid_acc["worst_case"], strict=True)
        ],
        "eps_curve_attack": "worst case of " + ", ".join(grid_attacks),
        "eps_grid": {
            "factors": factors,
            "eps": grid_eps,
            "attacks": grid_attacks,
            "accuracy": grid_acc,
        },
        "per_class": _per_class(y, {"clean": clean, **main, "worst_case": worst}, num_classes),
        "certified": {
            "summary": summary_cert,
            "bounds": bounds_report,
            "smoothing": smoothing_report,
            "gap": gap,
        },
        "sanity": {
            "flags": flags,
            "triggered": [f["code"] for f in flags if f["triggered"]],
            "white_box_trustworthy": trustworthy,
            "warning": warning,
            "model_check_examples": k_sanity,
        },
        "settings": settings,
        "checkpoint": {
            "path": str(ckpt_path.resolve()),
            "sha256": ckpt_sha,
            **ckpt_info,
        },
        "config_sha256": sha256_text(config_yaml),
        "config_file": config_file.name,
        "data_sha256": data_sha,
        "seed": seed,
        "timings_s": timings,
        "environment": env,
        "resume": {
            "units": store.reused + store.computed,
            "reused": store.reused,
            "rejected": store.rejected,
            "authenticated": store.mac is not None,
            "state_dir": str(store.root),
        },
    }
    report["report_dir"] = str(report_dir)
    check_report(_json_safe(report), "the evaluation report")
    json_path = write_report(report, report_dir, html=True)

    ledger = cfg.get("ledger")
    if ledger:
        entry = append_entry(
            str(ledger),
            {
                "report": json_path,
                "report_md": report_dir / "report.md",
                "report_html": report_dir / "report.html",
                "checkpoint": ckpt_path,
                "config": config_file,
            },
            summary={
                "output_dir": str(output_dir.resolve()),
                "clean_accuracy": clean_acc,
                "robust_accuracy": robust_acc,
                "certified": summary_cert,
                "threat_model": threat,
                "n_examples": n,
                "data_sha256": data_sha,
                "white_box_trustworthy": trustworthy,
            },
            signing_key=signing_key,
        )
        print(
            f"[advtrain-eval] ledger {ledger}: appended entry {entry['index']} "
            f"(sha256 {entry['sha256']})"
        )
    return report


def _print_summary(report: Mapping[str, Any], output_dir: str) -> None:
    folder = Path(str(report.get("report_dir") or output_dir))
    print(summary_table(report, str(folder / "report.html")))
    sanity = report.get("sanity") or {}
    if sanity.get("warning"):
        bar = "!" * 78
        print(
            f"{bar}\nWARNING: white-box robust accuracy cannot be trusted.\n"
            f"{sanity['warning']}\n{bar}",
            file=sys.stderr,
        )


@hydra.main(version_base="1.3", config_path="../conf", config_name="eval")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        report = run(cfg)
    except (CheckpointError, ValueError, TypeError) as exc:
        print(f"advtrain-eval: error: {exc}", file=sys.stderr)
        raise SystemExit(2) from exc
    except OSError as exc:
        exit_on_write_error("advtrain-eval", exc)
    except KeyboardInterrupt:
        print(
            f"\nadvtrain-eval: interrupted; finished work is saved in {cfg.output_dir}/eval_state. "
            f"Rerun the same command with output_dir={cfg.output_dir} to resume.",
            file=sys.stderr,
        )
        raise SystemExit(130) from None
    _print_summary(report, str(cfg.output_dir))


SUBCOMMANDS: dict[str, Callable[[Sequence[str]], int]] = {
    "verify": verify_main,
    "keygen": keygen_main,
    "compare": compare_main,
    "schema": schema_main,
}


def main(argv: Sequence[str] | None = None) -> None:
    """Console entry point ``advtrain-eval`` (subcommands first, else the Hydra app)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] in SUBCOMMANDS:
        raise SystemExit(SUBCOMMANDS[args[0]](args[1:]))
    while "--python-path" in args:  # the flag, before Hydra sees the command line
        i = args.index("--python-path")
        if i + 1 >= len(args):
            raise SystemExit("advtrain-eval: --python-path needs a folder")
        add_python_path([args[i + 1]])
        del args[i : i + 2]
    register_resolvers()
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


__all__ = ["SUBCOMMANDS", "WHITE_BOX_UNTRUSTED", "compare_main", "main", "run", "verify_main"]
