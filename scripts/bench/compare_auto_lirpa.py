"""Compare advtrain's IBP / CROWN / CROWN-IBP bounds with the reference library auto_LiRPA.

auto_LiRPA (Xu et al., "Automatic Perturbation Analysis for Scalable Certified Robustness and
Beyond", NeurIPS 2020; PyPI ``auto-lirpa``) is not a dependency of advtrain. Install it beside the
project, without its pinned dependencies (it pins torch < 1.13), and put it on ``PYTHONPATH``
(from the repository root)::

    pip install --no-deps --target /tmp/lirpa-site auto-lirpa==0.3 appdirs
    PYTHONPATH=/tmp/lirpa-site python -m scripts.bench.compare_auto_lirpa

auto_LiRPA 0.3 (2022) predates NumPy 2 and torch 2.x; three attributes it reads were removed since
(``numpy.lib.arraysetops``, ``torch.onnx.symbolic_helper._set_opset_version`` and subscripting a
``torch._C.Node`` for its attributes), and torch now passes ``remove_duplicate`` to
``Module._named_members``, which ``BoundedModule`` overrides with the old signature. This script
puts equivalents back in this process only (:func:`_compat_shims`,
:func:`_patch_bounded_module`); the bound computations themselves run as published.

For a few small float64 networks (MLP and CNN, with and without BatchNorm, eval mode, random
BatchNorm statistics) on digits inputs, it computes bounds on the logits and on the margins
``z_y - z_j`` with

* advtrain: :func:`advtrain.certify.interval_bounds` (IBP) and
  :func:`advtrain.certify.crown_bounds` (``intermediate="crown"``: full CROWN; ``"ibp"``:
  CROWN-IBP);
* auto_LiRPA: ``compute_bounds(method="IBP" | "CROWN" | "CROWN-IBP")`` on a ``BoundedModule``
  with ``sparse_intermediate_bounds=False`` (every intermediate neuron bounded by CROWN, the
  textbook definition advtrain implements; auto_LiRPA's default keeps IBP bounds for neurons IBP
  proves stable, reported separately as ``CROWN (lirpa default)``),

and prints the largest absolute and relative difference (relative to the largest bound
magnitude). Linf: the input set is the box ``[max(x - eps, 0), min(x + eps, 1)]`` for both. L2:
CROWN and CROWN-IBP concretise over the ball in both libraries; advtrain's IBP additionally
intersects the ball's box with the input box, so for L2 IBP the check is containment (advtrain's
interval inside auto_LiRPA's), not equality.

Exit status: 0 when every compared pair agrees to ``--rtol`` (containment for L2 IBP), 1
otherwise, 2 when auto_LiRPA cannot be imported (the reason is printed).

Usage::

    PYTHONPATH=/tmp/lirpa-site python -m scripts.bench.compare_auto_lirpa [--n 16] [--rtol 1e-5]
"""

from __future__ import annotations

import argparse
import sys
import types
from typing import Any, NoReturn

import numpy as np
import torch
from sklearn.datasets import load_digits
from torch import Tensor, nn

from advtrain.certify import crown_bounds, interval_bounds, margin_spec

from .timing import print_machine


def _compat_shims() -> None:
    """Restores three names auto_LiRPA 0.3 uses that NumPy 2 / torch 2.x removed (this process)."""
    if "numpy.lib.arraysetops" not in sys.modules:
        mod = types.ModuleType("numpy.lib.arraysetops")
        mod.isin = np.isin  # type: ignore[attr-defined]
        sys.modules["numpy.lib.arraysetops"] = mod
    try:
        import torch.onnx.symbolic_helper as helper

        if not hasattr(helper, "_set_opset_version"):
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS

            def _set_opset_version(version: int) -> None:
                GLOBALS.export_onnx_opset_version = version

            helper._set_opset_version = _set_opset_version  # type: ignore[attr-defined]
    except ImportError:  # an older torch has the original function
        pass
    node_cls = torch._C.Node
    if not hasattr(node_cls, "__getitem__"):
        # Old torch: node[name] returned the attribute through its kind-specific accessor.
        node_cls.__getitem__ = lambda self, k: getattr(self, self.kindOf(k))(k)  # type: ignore


def import_auto_lirpa() -> Any:
    """The ``auto_LiRPA`` module, or exits with status 2 and the reason."""
    _compat_shims()
    try:
        import auto_LiRPA
    except Exception as exc:  # ImportError, or an incompatibility raised at import time
        _unavailable(exc)
    _patch_bounded_module(auto_LiRPA.BoundedModule)
    return auto_LiRPA


def _patch_bounded_module(cls: type) -> None:
    """torch >= 2.0 passes ``remove_duplicate`` to ``_named_members``, which auto_LiRPA 0.3
    overrides with the older signature; accept and drop it (deduplication is what it does)."""
    original = cls._named_members  # type: ignore[attr-defined]
    if getattr(original, "_advtrain_compat", False):
        return

    def _named_members(
        self: Any,
        get_members_fn: Any,
        prefix: str = "",
        recurse: bool = True,
        remove_duplicate: bool = True,
    ) -> Any:
        return original(self, get_members_fn, prefix=prefix, recurse=recurse)

    _named_members._advtrain_compat = True  # type: ignore[attr-defined]
    cls._named_members = _named_members  # type: ignore[attr-defined]


def _unavailable(exc: BaseException) -> NoReturn:
    """Prints why auto_LiRPA cannot be used and exits with status 2."""
    print(
        "auto_LiRPA is not importable, so nothing was compared: "
        f"{type(exc).__name__}: {exc}\n"
        "Install it beside the project and put it on PYTHONPATH:\n"
        "    pip install --no-deps --target /tmp/lirpa-site auto-lirpa==0.3 appdirs\n"
        "    PYTHONPATH=/tmp/lirpa-site python -m scripts.bench.compare_auto_lirpa",
        file=sys.stderr,
    )
    sys.exit(2)


def _randomize_bn(net: nn.Module, gen: torch.Generator) -> None:
    for bn in net.modules():
        if isinstance(bn, nn.modules.batchnorm._BatchNorm):
            n = bn.num_features
            with torch.no_grad():
                bn.running_mean.copy_(torch.randn(n, generator=gen) * 0.3)
                bn.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                bn.weight.copy_(torch.randn(n, generator=gen) * 0.5 + 1.0)
                bn.bias.copy_(torch.randn(n, generator=gen) * 0.3)


def networks(seed: int = 0) -> dict[str, nn.Module]:
    """Small float64 networks on 1×8×8 inputs, eval mode."""
    torch.manual_seed(seed)
    nets: dict[str, nn.Module] = {
        "mlp": nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
        "mlp_bn": nn.Sequential(
            nn.Flatten(),
            nn.Linear(64, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Linear(32, 32),
            nn.BatchNorm1d(32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
        "cnn": nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
        "cnn_pad0": nn.Sequential(
            nn.Conv2d(1, 8, 3),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 2 * 2, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
        "cnn_bn": nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.BatchNorm2d(16),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(16 * 4 * 4, 32),
            nn.ReLU(),
            nn.Linear(32, 10),
        ),
    }
    gen = torch.Generator().manual_seed(seed)
    for net in nets.values():
        _randomize_bn(net, gen)
        net.double().eval()
    return nets


def digits(n: int) -> tuple[Tensor, Tensor]:
    """The first ``n`` digits images (float64, in [0, 1]) and their labels."""
    d = load_digits()
    x = torch.tensor(d.images[:n] / 16.0, dtype=torch.float64).unsqueeze(1)
    return x, torch.tensor(d.target[:n])


def _diff(ours: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor]) -> tuple[float, float]:
    """Largest absolute difference over both ends, and relative to the largest magnitude."""
    err = max((a - b).abs().max().item() for a, b in zip(ours, ref, strict=True))
    scale = max(b.abs().max().item() for b in ref)
    return err, err / max(scale, 1e-12)


def _contained(ours: tuple[Tensor, Tensor], ref: tuple[Tensor, Tensor], rtol: float) -> bool:
    """``ours`` lies inside ``ref`` (to ``rtol`` of the largest magnitude)."""
    tol = rtol * max(1.0, max(t.abs().max().item() for t in ref))
    return bool((ours[0] >= ref[0] - tol).all() and (ours[1] <= ref[1] + tol).all())


def _rule(name: str, norm: str, method: str) -> str:
    """``"equal"``, or ``"contained"`` where advtrain is tighter by design.

    For L2, advtrain's IBP (also CROWN-IBP's intermediate bounds) intersects the ball's box with
    the input box and computes a convolution's dual-norm radius with its zero padding, while
    auto_LiRPA 0.3's ``BoundConv.interval_propagate`` uses the whole kernel's norm at every
    position (its source says ``# TODO: padding``). Full CROWN meets that IBP only where
    auto_LiRPA takes its first-layer shortcut, a padded convolution directly on the input (and
    followed by a ReLU): here ``cnn``.
    """
    if norm != "l2":
        return "equal"
    if method in ("IBP", "CROWN-IBP"):
        return "contained"
    return "contained" if name == "cnn" else "equal"


def compare(n: int, rtol: float) -> list[dict[str, Any]]:
    """Every comparison as a row: network, norm, eps, spec, method, rule, differences, ok."""
    from auto_LiRPA import BoundedModule, BoundedTensor
    from auto_LiRPA.perturbations import PerturbationLpNorm

    x, y = digits(n)
    rows: list[dict[str, Any]] = []
    cases = [("linf", 0.02), ("linf", 0.1), ("l2", 0.5)]
    for name, net in networks().items():
        textbook = BoundedModule(
            net, torch.zeros_like(x), bound_opts={"sparse_intermediate_bounds": False}
        )
        default = BoundedModule(net, torch.zeros_like(x))
        textbook.eval()
        default.eval()
        for norm, eps in cases:
            if norm == "linf":
                ptb = PerturbationLpNorm(
                    norm=float("inf"),
                    eps=eps,
                    x_L=(x - eps).clamp(min=0.0),
                    x_U=(x + eps).clamp(max=1.0),
                )
            else:
                ptb = PerturbationLpNorm(norm=2.0, eps=eps)
            bx = BoundedTensor(x, ptb)
            for spec in ("logits", "margins"):
                labels = y if spec == "margins" else None
                C = margin_spec(y, 10, x.dtype) if spec == "margins" else None
                with torch.no_grad():
                    ours = {
                        "IBP": interval_bounds(net, x, eps, norm=norm, labels=labels),
                        "CROWN": crown_bounds(net, x, eps, norm=norm, labels=labels),
                        "CROWN-IBP": crown_bounds(
                            net, x, eps, norm=norm, labels=labels, intermediate="ibp"
                        ),
                    }
                    refs = {m: textbook.compute_bounds(x=(bx,), C=C, method=m) for m in ours}
                    # auto_LiRPA's default options, for information (no pass/fail).
                    refs["CROWN, lirpa defaults"] = default.compute_bounds(
                        x=(bx,), C=C, method="CROWN"
                    )
                ours["CROWN, lirpa defaults"] = ours["CROWN"]
                for method, mine in ours.items():
                    theirs = (refs[method][0].detach(), refs[method][1].detach())
                    err, rel = _diff(mine, theirs)
                    if method == "CROWN, lirpa defaults":
                        rule, ok = "info", None
                    else:
                        rule = _rule(name, norm, method)
                        ok = rel <= rtol if rule == "equal" else _contained(mine, theirs, rtol)
                    rows.append(
                        {
                            "net": name,
                            "norm": norm,
                            "eps": eps,
                            "spec": spec,
                            "method": method,
                            "rule": rule,
                            "abs": err,
                            "rel": rel,
                            "ok": ok,
                        }
                    )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=16, help="number of digits inputs")
    parser.add_argument("--rtol", type=float, default=1e-5, help="relative tolerance")
    args = parser.parse_args(argv)
    print_machine()
    lirpa = import_auto_lirpa()
    print(
        f"auto_LiRPA {getattr(lirpa, '__version__', '?')} from {lirpa.__file__}; torch "
        f"{torch.__version__}; float64, {args.n} digits inputs"
    )
    rows = compare(args.n, args.rtol)
    print(
        f"{'net':9} {'norm':5} {'eps':>5} {'spec':8} {'method':22} {'rule':9} {'max |diff|':>10} "
        f"{'relative':>9}  check"
    )
    for r in rows:
        check = "-" if r["ok"] is None else ("ok" if r["ok"] else "MISMATCH")
        print(
            f"{r['net']:9} {r['norm']:5} {r['eps']:5g} {r['spec']:8} {r['method']:22} "
            f"{r['rule']:9} {r['abs']:10.2e} {r['rel']:9.2e}  {check}"
        )
    equal = [r for r in rows if r["rule"] == "equal"]
    contained = [r for r in rows if r["rule"] == "contained"]
    bad = [r for r in equal + contained if not r["ok"]]
    print(
        f"equal (rtol {args.rtol:g}): {sum(r['ok'] for r in equal)}/{len(equal)}, largest "
        f"relative difference {max(r['rel'] for r in equal):.2e}; advtrain inside auto_LiRPA: "
        f"{sum(r['ok'] for r in contained)}/{len(contained)}"
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
