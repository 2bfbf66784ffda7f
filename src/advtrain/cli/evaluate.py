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
    advtrain-eval verify-data checkpoints/data_manifest.json data=digits   # the training data?

The evaluation (config ``conf/eval.yaml``) is :func:`advtrain.evaluation.run_evaluation` on the
plan the config describes (:mod:`advtrain.cli.eval_plan`), the same pipeline and report as a
training run's final evaluation:

* weights are read with ``torch.load(weights_only=True)`` (:mod:`advtrain.checkpoints`); a pickled
  checkpoint is refused unless ``trust_checkpoint=true``; a checkpoint of another architecture
  fails with the missing / unexpected / mis-shaped keys named;
* clean accuracy, each attack's robust accuracy (AutoAttack standard by default, with the accuracy
  after each of its members) and the per-example worst case at the threat model ``threat.eps``;
* robust accuracy along ``eps_grid`` (each attack and the worst case);
* verified accuracy by IBP / CROWN (``certify.bounds``; "not supported" is recorded for models
  with layers bound propagation cannot handle) and randomized-smoothing certified accuracy at
  ``certify.smoothing.radii`` when ``certify.smoothing.sigma`` is set;
* sanity flags (:mod:`advtrain.evaluation.sanity`): gradient masking, randomness, softmax outputs,
  black-box beating white-box, inconsistent eps curves; a prominent warning when they say the
  white-box numbers cannot be trusted;
* ``report.json`` (schema: :mod:`advtrain.report.schema`), ``report.md``, a self-contained
  ``report.html`` and the figures, with the SHA-256 of the checkpoint, the resolved config and the
  evaluated data, versions, git commit and device; one entry appended to the hash-chained ledger
  (``ledger=``, :mod:`advtrain.report.ledger`).

Resuming: every unit of work (one attack at one eps on one batch, one certificate on one batch) is
saved in ``output_dir/eval_state`` as it finishes (:mod:`advtrain.evaluation.state`); rerunning with
the same ``output_dir`` skips finished units and ends with the same numbers.

Subcommands: Hydra owns the command line, so ``verify``, ``compare``, ``schema`` and
``verify-data`` are recognised
as the first argument and dispatched before Hydra sees it.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from torch import nn

from advtrain.checkpoints import CheckpointError
from advtrain.cli.config import coerce_fractions, register_resolvers
from advtrain.cli.errors import exit_on_write_error
from advtrain.cli.eval_commands import compare_main, keygen_main, schema_main, verify_main
from advtrain.cli.eval_data import EvalData, contamination, load_split
from advtrain.cli.eval_model import load_model
from advtrain.cli.eval_plan import build_plan, container, threat_model
from advtrain.cli.eval_report import assemble_report, state_fingerprint, write_config
from advtrain.cli.schemas import check_seed
from advtrain.cli.trust import check_config_targets
from advtrain.cli.verify_data import verify_data_main
from advtrain.data.base import tensors_sha256
from advtrain.evaluation.flags import (
    WHITE_BOX_UNTRUSTED,
    contamination_flag,
    logged_accuracy_flags,
    rejected_state_flag,
)
from advtrain.evaluation.pipeline import fraction, run_evaluation
from advtrain.evaluation.plan import EvaluationPlan
from advtrain.evaluation.report import report_sections
from advtrain.evaluation.state import UnitStore
from advtrain.evaluation.units import UnitHook, UnitRunner
from advtrain.models.view import ClassifierView
from advtrain.provenance import Manifest
from advtrain.report import environment, summary_table, write_report
from advtrain.report.folders import reserve_report_dir
from advtrain.report.ledger import append_entry
from advtrain.report.signing import load_private_key, mac_key
from advtrain.threat import ThreatModel


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
    # the run's threat node (older run folders: the attack group held the threat model)
    threat = rc.get("threat") or rc.get("attack") or {}
    if cfg.threat.get("eps") is None and threat.get("eps") is not None:
        cfg.threat.eps = float(threat["eps"])
    if cfg.threat.get("norm") is None and threat.get("norm") is not None:
        cfg.threat.norm = str(threat["norm"])
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


def _signing_key(cfg: DictConfig) -> Any:
    """The ledger's Ed25519 private key (``ledger_key=`` or ``$ADVTRAIN_LEDGER_KEY``), if any."""
    path = cfg.get("ledger_key") or os.environ.get("ADVTRAIN_LEDGER_KEY")
    return load_private_key(str(path)) if path else None


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


def _threat(cfg: DictConfig) -> ThreatModel:
    if cfg.threat.get("norm") is None:
        cfg.threat.norm = "linf"
    return threat_model(cfg.threat)


def _data_flags(
    cfg: DictConfig, datamodule: Any, data: EvalData, clean_acc: float, logged: Mapping[str, float]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """The data flags (test examples found in the training data, a clean accuracy far below the
    one the checkpoint's run logged) and the contamination record."""
    settings = container(cfg.get("contamination") or {})
    record: dict[str, Any] = {"checked": False, "overlap": 0, "n": int(data.y.numel())}
    if settings.get("enabled", True):
        record = contamination(data, datamodule, settings.get("max_train_examples"))
    found = contamination_flag(record)
    flags = [found] if found is not None else []
    return flags + logged_accuracy_flags(clean_acc, logged), record


def _store(
    cfg: DictConfig, output_dir: Path, settings: Mapping[str, Any], hashes: list[Any]
) -> tuple[UnitStore, Any]:
    """The resumable state of this evaluation (bound to everything its numbers depend on)."""
    fingerprint = state_fingerprint(settings, hashes[0], hashes[1], environment())
    key = _signing_key(cfg)
    store = UnitStore(
        output_dir / "eval_state",
        fingerprint,
        settings,
        bool(cfg.get("resume", True)),
        mac=None if key is None else mac_key(key),
    )
    return store, key


def _training_data(cfg: DictConfig) -> dict[str, Any]:
    """``{"data_provenance": ...}`` from a run folder's training-data manifest, if it has one
    (``run_dir/checkpoints/data_manifest.json``, written by DataProvenance)."""
    if not cfg.get("run_dir"):
        return {}
    path = Path(str(cfg.run_dir)) / "checkpoints" / "data_manifest.json"
    if not path.is_file():
        return {}
    manifest = Manifest.load(path)  # a ManifestError (ValueError) for an edited file
    return {"data_provenance": {**manifest.summary(), "manifest": str(path.resolve())}}


def _ledger(cfg: DictConfig, report: Mapping[str, Any], files: Mapping[str, Any], key: Any) -> None:
    ledger = cfg.get("ledger")
    if not ledger:
        return
    entry = append_entry(
        str(ledger),
        files,
        summary={
            "output_dir": str(Path(str(cfg.output_dir)).resolve()),
            "clean_accuracy": report["clean_accuracy"],
            "robust_accuracy": report["robust_accuracy"],
            "certified": report["certified"]["summary"],
            "threat_model": report["threat_model"],
            "n_examples": report["n_examples"],
            "data_sha256": report["data_sha256"],
            "white_box_trustworthy": report["sanity"]["white_box_trustworthy"],
            "training_data_merkle_root": (report.get("data_provenance") or {}).get("merkle_root"),
        },
        signing_key=key,
    )
    print(
        f"[advtrain-eval] ledger {ledger}: appended entry {entry['index']} "
        f"(sha256 {entry['sha256']})"
    )


def _setup(cfg: DictConfig) -> tuple[ThreatModel, Path, torch.device, int]:
    register_resolvers()
    coerce_fractions(cfg)
    add_python_path(cfg.get("python_path") or [])
    _apply_run_dir(cfg)
    _check_targets(cfg)
    threat = _threat(cfg)
    output_dir = Path(str(cfg.output_dir))
    output_dir.mkdir(parents=True, exist_ok=True)
    return threat, output_dir, _device(cfg.get("device")), check_seed(cfg.seed)


def run(
    cfg: DictConfig,
    model: nn.Module | None = None,
    on_unit: UnitHook | None = None,
) -> dict[str, Any]:
    """Evaluates as configured, writes the report and the ledger entry; returns the report.

    The work is :func:`advtrain.evaluation.run_evaluation` on the plan of the config
    (:func:`advtrain.cli.eval_plan.build_plan`); this function loads the model and the data,
    keeps the resumable state and writes the evidence.

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
    wall = time.perf_counter()
    threat, output_dir, device, seed = _setup(cfg)
    t0 = time.perf_counter()
    net, ckpt, logged, model_desc = load_model(cfg, model, output_dir)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    datamodule, data = _load_data(cfg)  # pixels; the model seen through the data's normalisation
    if data.normalization is not None:
        net = ClassifierView(net, data.normalization).to(device).eval()
    data_sha = tensors_sha256(data.x, data.y)
    num_classes = _num_classes(cfg, net, data, device)
    timings = {"load": time.perf_counter() - t0}

    plan = build_plan(cfg, threat, seed)
    settings = _settings(cfg, plan, data, device, model_desc)
    store, key = _store(cfg, output_dir, settings, [ckpt["sha256"], data_sha])
    runner = UnitRunner(store, seed, bool(cfg.get("progress", True)), on_unit)
    for f in (out := run_evaluation(net, data.x, data.y, plan, runner, num_classes)).flags:
        if f["triggered"]:
            print(f"[advtrain-eval] WARNING {f['code']}: {f['message']}", file=sys.stderr)
    flags = [rejected_state_flag(store.rejected, store.mac is not None)] if store.rejected else []
    data_flags, overlap = _data_flags(cfg, datamodule, data, fraction(out.clean), logged)
    timings.update(out.seconds)
    timings["total_wall"] = time.perf_counter() - wall
    # a folder of its own for this report: never over files an earlier ledger entry names
    report_dir = reserve_report_dir(output_dir)
    config = write_config(cfg, report_dir)
    report = assemble_report(
        report_sections(out, plan, flags + data_flags),
        kind="evaluation",
        data={
            "name": str((cfg.get("data") or {}).get("name", "data")),
            "split": data.split,
            "source": data.source,
            "contamination": overlap,
        },
        checkpoint=ckpt,
        config=config,
        data_sha256=data_sha,
        seed=seed,
        timings=timings,
        environment=environment(),
        settings=settings,
        resume=_resume_record(store),
        report_dir=str(report_dir),
        **_training_data(cfg),
    )
    json_path = write_report(report, report_dir, html=True)
    files = {
        "report": json_path,
        "report_md": report_dir / "report.md",
        "report_html": report_dir / "report.html",
        "checkpoint": Path(ckpt["path"]),
        "config": config[0],
    }
    if report.get("data_provenance"):
        files["data_manifest"] = Path(report["data_provenance"]["manifest"])
    _ledger(cfg, report, files, key)
    return report


def _settings(
    cfg: DictConfig, plan: EvaluationPlan, data: EvalData, device: torch.device, model: Any
) -> dict[str, Any]:
    """What the numbers depend on: the plan's settings and what was evaluated where."""
    return {
        **plan.settings(),
        "n_examples": int(data.y.numel()),
        "n_examples_requested": cfg.get("n_examples"),
        "device": str(device),
        "model": model,
        "data": {
            "split": data.split,
            "normalization": None if data.normalization is None else data.normalization.as_dict(),
        },
    }


def _resume_record(store: UnitStore) -> dict[str, Any]:
    return {
        "units": store.reused + store.computed,
        "reused": store.reused,
        "rejected": store.rejected,
        "authenticated": store.mac is not None,
        "state_dir": str(store.root),
    }


def _num_classes(cfg: DictConfig, net: nn.Module, data: EvalData, device: torch.device) -> int:
    with torch.no_grad():
        k_out = int(net(data.x[:1].to(device)).shape[1])
    num_classes = int(cfg.data.get("num_classes") or k_out)
    if num_classes != k_out:
        raise ValueError(
            f"the model has {k_out} outputs but data.num_classes is {num_classes}; is model= "
            "the right architecture for this data?"
        )
    return num_classes


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
    "verify-data": verify_data_main,
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
