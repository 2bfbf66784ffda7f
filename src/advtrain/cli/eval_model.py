"""The network ``advtrain-eval`` evaluates, with its weights read safely.

Three ways to name the architecture:

* ``model=`` (a config of the ``model`` group, or ``model._target_=my_pkg.MyNet`` + its keyword
  arguments): the network is built and the checkpoint's ``state_dict`` tensors loaded into it
  (a ``model.``/``net.`` prefix of a Lightning module is found and stripped);
* ``module=my_pkg.MyLitModule``: the user's LightningModule class, built from the checkpoint's own
  hyper-parameters (``save_hyperparameters()``) and evaluated through its ``forward``. Only plain
  hyper-parameters are used: one the file pickled as an object (an ``nn.Module``, a project's
  class) is never unpickled (it could run code), so it must be given in ``module_kwargs``
  (``module_kwargs.net={_target_: my_pkg.Net, hidden: 64}``), which also overrides the others;
* ``run(cfg, model=net)`` from Python.

The weights always come from :func:`advtrain.checkpoints.read_checkpoint` (``weights_only``).
"""

from __future__ import annotations

import copy
import hashlib
import io
import sys
from pathlib import Path
from typing import Any

import torch
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig
from torch import nn

from advtrain.checkpoints import load_weights, match_state_dict, read_checkpoint
from advtrain.cli.eval_plan import container
from advtrain.report import sha256_file
from advtrain.unpickle import Skipped


def module_class(path: str) -> type[nn.Module]:
    """The class ``path`` names (``my_pkg.lit.MyLitModule``), checked to be a torch module.

    Raises:
        ValueError: If it does not import or is not an ``nn.Module`` subclass.
    """
    try:
        cls = get_class(path)
    except Exception as err:
        raise ValueError(
            f"module={path} does not import ({type(err).__name__}: {err}); give the class's full "
            "dotted path and python_path= (or --python-path) for your own package"
        ) from None
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ValueError(f"module={path} is not a torch.nn.Module (LightningModule) class")
    return cls


def _lightning_module(cfg: DictConfig) -> tuple[nn.Module, Any, str]:
    """The user's LightningModule built from the checkpoint's plain hyper-parameters and
    ``module_kwargs``, with the checkpoint's weights."""
    cls = module_class(str(cfg.module))
    ckpt = read_checkpoint(str(cfg.ckpt_path), trust=bool(cfg.get("trust_checkpoint")))
    hparams = dict(ckpt.extra.get("hyper_parameters") or {})
    given = dict(container(cfg.get("module_kwargs") or {}))
    kwargs = {k: v for k, v in hparams.items() if not isinstance(v, Skipped)}
    kwargs.update(
        {
            k: instantiate(v, _convert_="all") if isinstance(v, dict) and "_target_" in v else v
            for k, v in given.items()
        }
    )
    missing = sorted(k for k, v in hparams.items() if isinstance(v, Skipped) and k not in given)
    if missing:
        names = ", ".join(f"{k} (a pickled {type(hparams[k]).name})" for k in missing)
        raise ValueError(
            f"module={cfg.module}: the checkpoint pickled the hyper-parameter(s) {names}, which "
            "are not unpickled (that could run code); give them in module_kwargs, e.g. "
            f"'+module_kwargs.{missing[0]}={{_target_:my_pkg.MyNet}}', or evaluate the network "
            "alone with model._target_="
        )
    try:
        net = cls(**kwargs)
    except TypeError as err:
        raise ValueError(
            f"module={cfg.module} could not be built from the checkpoint's hyper-parameters "
            f"{sorted(kwargs)} ({err}); complete or correct them with module_kwargs"
        ) from None
    fitted, _ = match_state_dict(net, ckpt.state_dict, f"checkpoint {str(cfg.ckpt_path)!r}")
    net.load_state_dict(fitted, strict=True)
    return net, ckpt, f"module={cfg.module} (hyper-parameters: {sorted(kwargs)})"


def save_weights(net: nn.Module, output_dir: Path) -> tuple[Path, str]:
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


def load_model(
    cfg: DictConfig, model: nn.Module | None, output_dir: Path
) -> tuple[nn.Module, dict[str, Any], dict[str, float], Any]:
    """The network with its weights; the report's checkpoint record, the accuracies the
    checkpoint's run logged, and a description of the architecture."""
    if cfg.get("module") and cfg.get("ckpt_path"):
        net, ckpt, desc = _lightning_module(cfg)
    elif model is not None:
        net = copy.deepcopy(model).cpu()
        desc = f"passed to run(): {type(model).__module__}.{type(model).__qualname__}"
    else:
        net = instantiate(cfg.model, _convert_="all")
        desc = container(cfg.model)
    if cfg.get("ckpt_path"):
        if not cfg.get("module"):
            ckpt = load_weights(net, str(cfg.ckpt_path), trust=bool(cfg.get("trust_checkpoint")))
        path = Path(str(cfg.ckpt_path))
        record = {"sha256": ckpt.sha256, "format": ckpt.format, "loaded_with": ckpt.loaded_with}
        if ckpt.extra.get("skipped"):
            record["skipped"] = list(ckpt.extra["skipped"])
            print(
                f"[advtrain-eval] read the weights of {path}; skipped what needs code to "
                f"unpickle: {', '.join(ckpt.extra['skipped'])}",
                file=sys.stderr,
            )
        logged = dict(ckpt.extra.get("logged") or {})
    elif model is not None:
        path, sha = save_weights(net, output_dir)
        record = {"sha256": sha, "format": "state_dict", "loaded_with": "weights_only"}
        logged = {}
    else:
        raise ValueError(
            "nothing to evaluate: give ckpt_path= (a state_dict, model.pt or Lightning .ckpt, "
            "with model= its architecture) or run_dir= (an advtrain-train output folder)"
        )
    record = {"path": str(path.resolve()), **record}
    return net, record, logged, desc


__all__ = ["load_model", "module_class", "save_weights"]
