"""Same-model comparison of advtrain's attacks with torchattacks' (an outside reference).

torchattacks is not a dependency (it requires torchvision, which would replace this project's
torch); install it beside the project without its dependencies (then, from the repository root)::

    pip install --no-deps --target /tmp/tasite torchattacks==3.5.1
    PYTHONPATH=/tmp/tasite python -m scripts.bench.compare_torchattacks outputs/.../model.pt

The model is a SmallCNN state_dict (an advtrain-train run's model.pt); the data is the 360
digits test images. Prints robust accuracy and wall time for AutoAttack standard, APGD-CE
(100 iterations) and PGD-50 at Linf eps 0.2 from both libraries.
"""

from __future__ import annotations

import argparse

import torch

from advtrain.attacks import APGD, PGD, AutoAttack
from advtrain.data import DigitsDataModule
from advtrain.models import SmallCNN

from .timing import print_machine, timed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("weights", help="SmallCNN state_dict (model.pt)")
    parser.add_argument("--eps", type=float, default=0.2)
    args = parser.parse_args()
    print_machine()
    import torchattacks  # optional, installed by hand (see the module docstring)

    model = SmallCNN()
    model.load_state_dict(torch.load(args.weights, weights_only=True))
    model.eval()
    x, y = DigitsDataModule().test_tensors()

    def accuracy(x_adv: torch.Tensor) -> float:
        with torch.no_grad():
            return float((model(x_adv).argmax(1) == y).float().mean())

    runs = {
        "torchattacks AutoAttack standard": lambda: torchattacks.AutoAttack(
            model, norm="Linf", eps=args.eps, version="standard", n_classes=10, seed=0
        )(x, y),
        "advtrain AutoAttack standard": lambda: AutoAttack(eps=args.eps, seed=0)(model, x, y),
        "torchattacks APGD-CE 100": lambda: torchattacks.APGD(
            model, norm="Linf", eps=args.eps, steps=100, seed=0, loss="ce"
        )(x, y),
        "advtrain APGD-CE 100": lambda: APGD(eps=args.eps, steps=100, seed=0)(model, x, y),
        "advtrain PGD-50": lambda: PGD(eps=args.eps, steps=50, seed=0)(model, x, y),
    }
    for name, fn in runs.items():
        x_adv, wall, _ = timed(fn)
        print(f"{name:36s} {100 * accuracy(x_adv):5.1f}%  {wall:6.1f} s")


if __name__ == "__main__":
    main()
