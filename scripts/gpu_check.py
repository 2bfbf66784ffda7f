"""One prepared GPU check for a lent machine (run through scripts/gpu_check.sh, < 10 minutes).

1. Correctness: PGD and APGD under bf16 autocast vs fp32 on CUDA reach the same robust accuracy
   (within a few points) on a PreActResNet-18 and stay inside the eps-ball and the box.
2. Throughput: PGD-AT (PGD-10) training steps per second for PreActResNet-18 on CIFAR-shaped
   synthetic batches, fp32 and bf16, through the AdversarialTraining callback vs a hand-written
   PyTorch loop, measured in the same run (ratio printed).
3. Randomized-smoothing certify throughput (noisy forward passes per second).

Prints a Markdown block to paste into BENCHMARKS.md with the card's name. ``--device cpu --quick``
runs the same code paths on the CPU in seconds (used to check the script itself).
"""

from __future__ import annotations

import argparse
import time

import pytorch_lightning as pl
import torch
import torch.nn.functional as F

from advtrain.attacks import APGD, PGD
from advtrain.certify import Smooth
from advtrain.models import PreActResNet18, SmallCNN

MODELS = {
    "preact_resnet18": PreActResNet18,
    "small_cnn": lambda: SmallCNN(input_shape=(3, 32, 32), num_classes=10),
}
MODEL = "preact_resnet18"


def _model() -> torch.nn.Module:
    return MODELS[MODEL]()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def check_autocast(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[str]:
    """Robust accuracy under fp32 vs bf16 autocast for PGD-10 and APGD-CE-20."""
    rows = []
    for attack in (PGD(eps=8 / 255, steps=10, seed=0), APGD(eps=8 / 255, steps=20, seed=0)):
        x32 = attack(model, x, y)
        with torch.autocast(device_type=x.device.type, dtype=torch.bfloat16):
            x16 = attack(model, x, y)
        inside = bool(attack.threat.contains(x16, x).all()) and x16.dtype == x.dtype
        a32, a16 = _accuracy(model, x32, y), _accuracy(model, x16, y)
        rows.append(
            f"| {attack.name} | {100 * a32:.1f}% | {100 * a16:.1f}% | "
            f"{'ok' if inside and abs(a32 - a16) <= 0.05 else 'MISMATCH'} |"
        )
    return rows


def _hand_pgd_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    gen: torch.Generator,
) -> None:
    delta = (torch.rand(x.shape, generator=gen, device=x.device) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        loss = F.cross_entropy(model(x_adv).float(), y)
        (g,) = torch.autograd.grad(loss, x_adv)
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(
            0, 1
        )
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    opt.zero_grad(set_to_none=True)
    F.cross_entropy(model(x_adv), y).backward()
    opt.step()


def throughput(device: torch.device, steps: int, batch: int, dtype: torch.dtype | None) -> str:
    """Steps/s of PGD-10 adversarial training: hand-written loop vs the callback's code path."""
    from torch.utils.data import DataLoader, TensorDataset

    from advtrain.callbacks import AdversarialTraining
    from advtrain.lit import AdversarialClassifier

    gen = torch.Generator(device=device).manual_seed(0)
    x = torch.rand(batch * steps, 3, 32, 32, device=device, generator=gen)
    y = torch.randint(0, 10, (batch * steps,), device=device, generator=gen)
    eps, alpha = 8 / 255, 2 / 255

    model = _model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    ctx = (
        torch.autocast(device.type, dtype=dtype)
        if dtype
        else torch.autocast(device.type, enabled=False)
    )
    warmup = min(3, steps - 1)
    with ctx:
        for i in range(steps):
            if i == warmup:
                _sync(device)
                t0 = time.perf_counter()
            sl = slice(i * batch, (i + 1) * batch)
            _hand_pgd_step(model, opt, x[sl], y[sl], eps, alpha, 10, gen)
    _sync(device)
    hand = time.perf_counter() - t0

    module = AdversarialClassifier(_model(), optimizer="sgd", lr=0.01)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch)
    precision = "bf16-mixed" if dtype == torch.bfloat16 else "32-true"
    trainer = pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        max_epochs=1,
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        callbacks=[
            AdversarialTraining(PGD(eps=eps, steps=10, alpha=alpha, seed=0)),
            timer := _StepTimer(device, warmup),
        ],
    )
    trainer.fit(module, loader)
    cb = timer.seconds
    name = "bf16" if dtype else "fp32"
    timed = steps - warmup
    return (
        f"| PGD-AT {MODEL} {name}, batch {batch} | {timed / hand:.2f} | {timed / cb:.2f} "
        f"| {cb / hand:.3f} |"
    )


class _StepTimer(pl.Callback):
    """Wall time of the training batches from batch ``warmup`` on (setup and warm-up excluded,
    as in the hand-written loop)."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.device, self.warmup = device, warmup
        self.start = self.seconds = 0.0

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            _sync(self.device)
            self.start = time.perf_counter()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        _sync(self.device)
        self.seconds = time.perf_counter() - self.start


def certify_rate(device: torch.device, n: int) -> str:
    model = _model().to(device).eval()
    smooth = Smooth(model, num_classes=10, sigma=0.25, seed=0)
    x = torch.rand(3, 32, 32, device=device)
    _sync(device)
    t0 = time.perf_counter()
    smooth.certify(x, n0=100, n=n, alpha=0.001, batch_size=min(n, 1000))
    _sync(device)
    dt = time.perf_counter() - t0
    rate = (n + 100) / dt
    return f"| smoothing certify, n0=100 n={n} | {rate:,.0f} noisy forwards/s | {dt:.2f} s/image |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU self-check)")
    parser.add_argument("--model", choices=sorted(MODELS), default="preact_resnet18")
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    device = torch.device(args.device)
    quick = args.quick
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"## GPU check on {card} (torch {torch.__version__})\n")
    torch.manual_seed(0)
    model = _model().to(device).eval()
    x = torch.rand(16 if quick else 256, 3, 32, 32, device=device)
    y = model(x).argmax(1).detach()
    print("| attack | fp32 robust acc | bf16 robust acc | check |\n|---|---|---|---|")
    print("\n".join(check_autocast(model, x, y)))
    print("\n| training | hand-written steps/s | callback steps/s | callback / hand time |")
    print("|---|---|---|---|")
    steps, batch = (4, 8) if quick else (40, 128)
    print(throughput(device, steps, batch, None))
    print(throughput(device, steps, batch, torch.bfloat16))
    print("\n| certify | rate | time |\n|---|---|---|")
    print(certify_rate(device, 200 if quick else 100_000))


if __name__ == "__main__":
    main()
