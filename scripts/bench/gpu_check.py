"""One prepared GPU check for a lent machine (run through scripts/gpu_check.sh, ~3-5 minutes).

Run by hand from the repository root: ``python -m scripts.bench.gpu_check [--sections 34]``.

1. Training in three precisions: PGD-AT on digits (SmallCNN, 30 epochs, eps 0.2 ramped over the
   first 30%, Adam 1e-3, batch 64: issue #4's budget) through ``AdversarialTraining`` on CUDA with
   ``precision`` = ``32-true``, ``bf16-mixed`` and ``16-mixed``; each model judged by AutoAttack
   (standard) in float32 on the 360 test digits. The three must agree within seed noise.
2. Attacks under autocast on CUDA: PGD-50, APGD-CE and AutoAttack on the float32 model, in
   float32 and under bf16 and float16 autocast, and the same AutoAttack on the CPU; plus the
   float16 underflow case (a confident standard-trained model, PGD-10) where, without per-example
   loss scaling, float16 overstates robustness.
3. Throughput: PGD-AT (PGD-10) steps/s for PreActResNet-18 on CIFAR-shaped batches in fp32, bf16
   and fp16, through the callback vs a hand-written PyTorch loop, measured in the same run.
4. Randomized-smoothing certify throughput (noisy forward passes per second).

Prints Markdown (to paste into BENCHMARKS.md) as it goes; a section that fails prints its error
and the next one runs. ``--device cpu --quick`` runs the same code paths on the CPU in seconds
(the test suite does this to check the script itself).
"""

from __future__ import annotations

import argparse
import contextlib
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from advtrain.attacks import APGD, PGD, AutoAttack
from advtrain.certify import Smooth
from advtrain.models import PreActResNet18, SmallCNN

from .timing import Span, markdown_header, markdown_row, print_machine, timed

MODELS = {
    "preact_resnet18": PreActResNet18,
    "small_cnn": lambda: SmallCNN(input_shape=(3, 32, 32), num_classes=10),
}
MODEL = "preact_resnet18"
PRECISIONS = ("32-true", "bf16-mixed", "16-mixed")
AUTOCAST = {"32-true": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}
DIGITS_EPS = 0.2


def _model() -> torch.nn.Module:
    return MODELS[MODEL]()


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    dtype = AUTOCAST[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def _accuracy(model: nn.Module, x: Tensor, y: Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def _trainer(device: torch.device, precision: str | None, **kwargs: object) -> pl.Trainer:
    plugins: list = []
    if precision == "16-mixed" and device.type == "cpu":
        # Lightning maps 16-mixed to bf16 on a CPU; its own float16 plugin keeps the code path.
        from pytorch_lightning.plugins import MixedPrecision

        plugins = [MixedPrecision("16-mixed", "cpu", torch.amp.GradScaler("cpu"))]
        precision = None
    return pl.Trainer(
        accelerator="gpu" if device.type == "cuda" else "cpu",
        devices=1,
        precision=precision,
        plugins=plugins,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=0,
        **kwargs,
    )


def _section(title: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Runs a section, printing its title; an error is printed and the script goes on."""

    def wrap(fn: Callable[..., None]) -> Callable[..., None]:
        def run(*args: object, **kwargs: object) -> None:
            print(f"\n### {title}\n", flush=True)
            t0 = time.perf_counter()
            try:
                fn(*args, **kwargs)
            except Exception:  # report it and go on to the next section
                print("```\n" + traceback.format_exc() + "```")
            print(f"\n({time.perf_counter() - t0:.0f} s)", flush=True)

        return run

    return wrap


# -- 1. PGD-AT on digits in three precisions ----------------------------------------------------
def train_digits(device: torch.device, precision: str, epochs: int) -> tuple[nn.Module, float]:
    """PGD-AT (PGD-7, step 2.5·eps/7) through the callback; returns (model, seconds)."""
    from advtrain.callbacks import AdversarialTraining
    from advtrain.data import DigitsDataModule
    from advtrain.lit import AdversarialClassifier
    from advtrain.schedules import Linear

    pl.seed_everything(0, verbose=False)
    net = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
    module = AdversarialClassifier(net, optimizer="adam", lr=1e-3)
    attack = PGD(eps=DIGITS_EPS, steps=7, alpha=2.5 * DIGITS_EPS / 7, seed=0)
    callback = AdversarialTraining(attack, schedules={"eps": Linear(0.0, DIGITS_EPS, ramp=0.3)})
    trainer = _trainer(device, precision, max_epochs=epochs, callbacks=[callback])
    dm = DigitsDataModule(batch_size=64, seed=0)
    seconds = timed(lambda: trainer.fit(module, datamodule=dm), device).wall
    return net.to(device).eval(), seconds


def _autoattack(model: nn.Module, x: Tensor, y: Tensor, n_queries: int) -> float:
    aa = AutoAttack(eps=DIGITS_EPS, version="standard", seed=0, n_queries=n_queries)
    return _accuracy(model, aa(model, x, y), y)


@_section("1. PGD-AT on digits through the callback, three precisions (AutoAttack in fp32)")
def section_training(device: torch.device, quick: bool, models: dict[str, nn.Module]) -> None:
    from advtrain.data import DigitsDataModule

    x, y = DigitsDataModule(batch_size=64, seed=0).test_tensors(32 if quick else None)
    x, y = x.to(device), y.to(device)
    epochs, queries = (1, 20) if quick else (30, 5000)
    print(
        markdown_header(
            ["precision", "train time", "clean", f"AutoAttack (standard, eps {DIGITS_EPS})"]
        )
    )
    for precision in PRECISIONS:
        model, seconds = train_digits(device, precision, epochs)
        models[precision] = model
        robust, aa_s, _ = timed(lambda model=model: _autoattack(model, x, y, queries), device)
        cells = [f"{seconds:.1f} s", f"{100 * _accuracy(model, x, y):.1f}%"]
        print(markdown_row([precision, *cells, f"{100 * robust:.1f}% ({aa_s:.1f} s)"]), flush=True)


# -- 2. attacks under autocast --------------------------------------------------------------------
def _confident_model(device: torch.device, epochs: int) -> nn.Module:
    """A standard-trained digits SmallCNN (hand loop): confident, so fp16 gradients underflow."""
    from advtrain.data import DigitsDataModule

    dm = DigitsDataModule(batch_size=64, seed=0)
    dm.setup("fit")
    x, y = dm.train_set.tensors  # type: ignore[union-attr]
    x, y = x.to(device), y.to(device)
    torch.manual_seed(0)
    model = SmallCNN(input_shape=(1, 8, 8), num_classes=10).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(epochs):
        perm = torch.randperm(len(y), device=device)
        for start in range(0, len(y), 64):
            idx = perm[start : start + 64]
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model.eval()


@_section("2. Attacks under autocast on the float32-trained model; CPU vs CUDA")
def section_autocast(device: torch.device, quick: bool, models: dict[str, nn.Module]) -> None:
    from advtrain.data import DigitsDataModule

    x, y = DigitsDataModule(batch_size=64, seed=0).test_tensors(32 if quick else None)
    x, y = x.to(device), y.to(device)
    queries = 20 if quick else 5000
    model = models.get("32-true")
    if model is None:
        model, _ = train_digits(device, "32-true", 1 if quick else 30)
    attacks: dict[str, Callable[[], object]] = {
        "PGD-50": lambda: PGD(eps=DIGITS_EPS, steps=50, seed=0),
        "APGD-CE": lambda: APGD(eps=DIGITS_EPS, seed=0),
        "AutoAttack": lambda: AutoAttack(eps=DIGITS_EPS, seed=0, n_queries=queries),
    }
    headers = ["attack", "fp32", "bf16 autocast", "fp16 autocast", "inside ball and box"]
    print(markdown_header(headers))

    def autocast_attack(attack: Any, precision: str) -> Tensor:
        with _autocast(device, precision):
            return attack(model, x, y)  # type: ignore[no-any-return]

    for name, make in attacks.items():
        accs, inside = [], True
        for precision in PRECISIONS:
            attack = make()
            x_adv, dt, _ = timed(lambda a=attack, p=precision: autocast_attack(a, p), device)
            inside &= bool(attack.threat.contains(x_adv, x).all()) and x_adv.dtype == x.dtype
            accs.append(f"{100 * _accuracy(model, x_adv, y):.1f}% ({dt:.1f} s)")
        print(markdown_row([name, *accs, "yes" if inside else "NO"]), flush=True)
    if device.type == "cuda":
        cpu_model = SmallCNN(input_shape=(1, 8, 8), num_classes=10)
        cpu_model.load_state_dict({k: v.cpu() for k, v in model.state_dict().items()})
        cpu_acc, dt, _ = timed(lambda: _autoattack(cpu_model.eval(), x.cpu(), y.cpu(), queries))
        print(
            f"\nAutoAttack of the same model on the CPU ({torch.get_num_threads()} threads): "
            f"{100 * cpu_acc:.1f}% ({dt:.1f} s)"
        )

    confident = _confident_model(device, 2 if quick else 40)
    attack = PGD(eps=DIGITS_EPS, steps=10, seed=0, random_start=False)
    acc32 = _accuracy(confident, attack(confident, x, y), y)
    with torch.autocast(device.type, dtype=torch.float16):
        acc16 = _accuracy(confident, attack(confident, x, y), y)
    with _loss_scaling_off(), torch.autocast(device.type, dtype=torch.float16):
        acc_off = _accuracy(confident, attack(confident, x, y), y)
    print(
        f"\nfloat16 underflow case (standard-trained model, clean "
        f"{100 * _accuracy(confident, x, y):.1f}%, PGD-10 no random start): fp32 "
        f"{100 * acc32:.1f}%, fp16 autocast {100 * acc16:.1f}%, fp16 without loss scaling "
        f"{100 * acc_off:.1f}%"
    )


@contextlib.contextmanager
def _loss_scaling_off() -> Iterator[None]:
    """Switches the attacks' per-example loss scaling off (the control run)."""
    from advtrain.attacks import pgd as pgd_module

    original = pgd_module.loss_scaled_logits
    pgd_module.loss_scaled_logits = lambda z, per_example=True: (z, lambda g: g)  # type: ignore
    try:
        yield
    finally:
        pgd_module.loss_scaled_logits = original


# -- 3. throughput ------------------------------------------------------------------------------
def _hand_pgd_step(
    model: torch.nn.Module,
    opt: torch.optim.Optimizer,
    precision: str,
    scaler: torch.amp.GradScaler | None,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    steps: int,
    gen: torch.Generator,
) -> None:
    """One PGD-AT step written by hand, autocast around the forward passes only (as PyTorch's
    AMP recipe says: an autocast region around ``optimizer.step()`` keeps using its cached
    low-precision copies of the weights from before the step)."""
    device = x.device
    delta = (torch.rand(x.shape, generator=gen, device=device) * 2 - 1) * eps
    x_adv = (x + delta).clamp(0, 1)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with _autocast(device, precision):
            logits = model(x_adv)
        if scaler is None:
            (g,) = torch.autograd.grad(F.cross_entropy(logits.float(), y), x_adv)
        else:
            # float16: the same per-example loss scaling as the library's attacks, by hand. The
            # cross-entropy gradient at the logits, softmax - onehot, is computed in float32 and
            # rescaled per example to a largest magnitude of 1 before it enters the float16
            # network (a fixed scale such as 1024 leaves confident examples at exactly zero).
            g_logits = torch.softmax(logits.detach().float(), dim=1)
            g_logits[torch.arange(y.shape[0], device=device), y] -= 1.0
            factor = g_logits.abs().amax(dim=1, keepdim=True).clamp_min(1e-30).reciprocal()
            upstream = (g_logits * factor).to(logits.dtype)
            (g,) = torch.autograd.grad(logits, x_adv, grad_outputs=upstream)
            g = g / factor.view(-1, *([1] * (g.dim() - 1)))
        x_adv = torch.min(torch.max(x_adv.detach() + alpha * g.sign(), x - eps), x + eps).clamp(
            0, 1
        )
    for p in model.parameters():
        p.requires_grad_(True)
    model.train()
    opt.zero_grad(set_to_none=True)
    with _autocast(device, precision):
        loss = F.cross_entropy(model(x_adv), y)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()


def _hand_seconds(
    device: torch.device, precision: str, x: Tensor, y: Tensor, batch: int, warmup: int
) -> float:
    """Hand-written PGD-AT over CPU-held batches (copied to the device per step, as a loader's
    batches are), timed from batch ``warmup`` on."""
    eps, alpha = 8 / 255, 2 / 255
    gen = torch.Generator(device=device).manual_seed(0)
    model = _model().to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    scaler = torch.amp.GradScaler(device.type) if precision == "16-mixed" else None
    span = Span(device)
    span.start()
    for i in range(x.shape[0] // batch):
        if i == warmup:
            span.start()
        xb = x[i * batch : (i + 1) * batch].to(device)
        yb = y[i * batch : (i + 1) * batch].to(device)
        _hand_pgd_step(model, opt, precision, scaler, xb, yb, eps, alpha, 10, gen)
    span.stop()
    return span.wall


def _callback_seconds(
    device: torch.device, precision: str, x: Tensor, y: Tensor, batch: int, warmup: int
) -> float:
    from torch.utils.data import DataLoader, TensorDataset

    from advtrain.callbacks import AdversarialTraining
    from advtrain.lit import AdversarialClassifier

    eps, alpha = 8 / 255, 2 / 255
    module = AdversarialClassifier(_model(), optimizer="sgd", lr=0.01)
    loader = DataLoader(TensorDataset(x, y), batch_size=batch)
    timer = _StepTimer(device, warmup)
    callbacks = [AdversarialTraining(PGD(eps=eps, steps=10, alpha=alpha, seed=0)), timer]
    _trainer(device, precision, max_epochs=1, callbacks=callbacks).fit(module, loader)
    return timer.span.wall


def throughput(
    device: torch.device, steps: int, batch: int, precision: str, callback_first: bool = False
) -> str:
    """Steps/s of PGD-10 adversarial training: hand-written loop vs the callback's code path,
    on the same CPU-held synthetic CIFAR-shaped batches."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch * steps, 3, 32, 32, generator=gen)
    y = torch.randint(0, 10, (batch * steps,), generator=gen)
    warmup = min(3, steps - 1)
    if callback_first:
        cb = _callback_seconds(device, precision, x, y, batch, warmup)
        hand = _hand_seconds(device, precision, x, y, batch, warmup)
    else:
        hand = _hand_seconds(device, precision, x, y, batch, warmup)
        cb = _callback_seconds(device, precision, x, y, batch, warmup)
    n = steps - warmup
    setting = f"PGD-AT {MODEL} {precision}, batch {batch}"
    return markdown_row([setting, f"{n / hand:.2f}", f"{n / cb:.2f}", f"{cb / hand:.3f}"])


class _StepTimer(pl.Callback):
    """Wall time of the training batches from batch ``warmup`` on (setup and warm-up excluded,
    as in the hand-written loop)."""

    def __init__(self, device: torch.device, warmup: int) -> None:
        self.warmup = warmup
        self.span = Span(device)

    def on_train_batch_start(
        self, trainer: pl.Trainer, module: pl.LightningModule, batch: object, batch_idx: int
    ) -> None:
        if batch_idx == self.warmup:
            self.span.start()

    def on_train_end(self, trainer: pl.Trainer, module: pl.LightningModule) -> None:
        self.span.stop()


@_section("3. PGD-AT throughput, callback vs hand-written (same run)")
def section_throughput(device: torch.device, quick: bool) -> None:
    headers = ["training", "hand-written steps/s", "callback steps/s", "callback / hand time"]
    print(markdown_header(headers))
    runs = [(4, 8)] if quick else [(60, 128), (30, 512)]
    for steps, batch in runs:
        for repeat in range(1 if quick else 2):  # alternate which runs first
            for precision in PRECISIONS:
                print(throughput(device, steps, batch, precision, repeat % 2 == 1), flush=True)


# -- 4. certify -----------------------------------------------------------------------------------
@_section("4. Randomized-smoothing certify throughput")
def section_certify(device: torch.device, quick: bool) -> None:
    n = 200 if quick else 100_000
    model = _model().to(device).eval()
    smooth = Smooth(model, num_classes=10, sigma=0.25, seed=0)
    x = torch.rand(3, 32, 32, device=device)
    smooth.certify(x, n0=10, n=min(n, 1000), alpha=0.001, batch_size=min(n, 1000))  # warm-up
    _, dt, _ = timed(
        lambda: smooth.certify(x, n0=100, n=n, alpha=0.001, batch_size=min(n, 1000)), device
    )
    print(markdown_header(["certify", "rate", "time"]))
    setting = f"smoothing certify {MODEL}, n0=100 n={n}"
    print(markdown_row([setting, f"{(n + 100) / dt:,.0f} noisy forwards/s", f"{dt:.2f} s/image"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (CPU self-check)")
    parser.add_argument("--model", choices=sorted(MODELS), default="preact_resnet18")
    parser.add_argument(
        "--sections", default="1234", help="which sections to run, e.g. 34 (default: all)"
    )
    args = parser.parse_args()
    global MODEL
    MODEL = args.model
    device = torch.device(args.device)
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"## GPU check on {card} (torch {torch.__version__}, Lightning {pl.__version__})\n")
    print_machine(device)
    models: dict[str, nn.Module] = {}
    if "1" in args.sections:
        section_training(device, args.quick, models)
    if "2" in args.sections:
        section_autocast(device, args.quick, models)
    if "3" in args.sections:
        section_throughput(device, args.quick)
    if "4" in args.sections:
        section_certify(device, args.quick)


if __name__ == "__main__":
    main()
