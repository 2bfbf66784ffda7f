"""advtrain's callbacks in code that is not advtrain's: a lightning-hydra-template-style project
(``lightning`` imports, ``Compose([ToTensor(), Normalize(...)])``, ``random_split`` over a
``ConcatDataset``, a network pickled into the hyperparameters) and a ``pytorch_lightning`` project
in the style of Lightning's examples, both unmodified (tests/integration/outside/).

Robust accuracy is always judged in pixel space (eps in [0, 1] image units), with AutoAttack's
APGD-CE + APGD-T, on the projects' own test split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as L
import pytest
import pytorch_lightning as PL
import torch
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms

from advtrain.attacks import PGD, AutoAttack
from advtrain.callbacks import AdversarialTraining, FreeAdversarialTraining, RobustEvaluation
from advtrain.evaluation import evaluate_attacks
from advtrain.models import Normalize

from .outside.digit_images import DIGITS_MEAN, DIGITS_STD
from .outside.pl_project import DigitsData, LitAutoEncoder, LitClassifier
from .outside.template_project import DigitsDataModule, DigitsLitModule, SimpleDenseNet
from .test_callback_helpers import one_thread, trainer  # noqa: F401  (autouse fixture)

EPS = 0.2  # in pixels of [0, 1] images (about three of the digits' 17 grey levels)


def quiet(package: Any, **kwargs: Any) -> Any:
    """A quiet CPU Trainer of ``package`` (``lightning.pytorch`` or ``pytorch_lightning``)."""
    defaults: dict[str, Any] = {"max_epochs": 10, **kwargs}
    return trainer(defaults.pop("callbacks", ()), package=package, **defaults)


def pixel_split(subset: Any) -> tuple[Tensor, Tensor]:
    """A ``random_split`` subset of the digit images as pixels in [0, 1] (no normalisation)."""
    to_tensor = transforms.ToTensor()
    xs, ys = [], []
    for i in subset.indices:
        dataset, j = subset.dataset, i
        if hasattr(dataset, "datasets"):  # a ConcatDataset: find the part holding index i
            for part in dataset.datasets:
                if j < len(part):
                    dataset = part
                    break
                j -= len(part)
        xs.append(to_tensor(Image.fromarray(dataset.data[j], mode="L")))
        ys.append(int(dataset.targets[j]))
    return torch.stack(xs), torch.tensor(ys)


def all_pixels(dataset: Any) -> tuple[Tensor, Tensor]:
    """A whole digit-images dataset as pixels."""
    return pixel_split(torch.utils.data.Subset(dataset, list(range(len(dataset)))))


def in_pixels(module: nn.Module) -> nn.Module:
    """A module trained on normalised inputs, as a classifier of pixels."""
    return nn.Sequential(Normalize(DIGITS_MEAN, DIGITS_STD), module).eval()


def pixel_robust_accuracy(model: nn.Module, x: Tensor, y: Tensor, eps: float = EPS) -> float:
    """AutoAttack (APGD-CE + APGD-T) accuracy of a pixel-space model at ``eps``."""
    model.eval()
    x_adv = AutoAttack(eps=eps, version="fast", seed=0)(model, x, y)
    with torch.no_grad():
        return float((model(x_adv).argmax(dim=1) == y).float().mean())


def template_run(kind: str, epochs: int = 10) -> tuple[nn.Module, tuple[Tensor, Tensor]]:
    """The template project trained one way; returns its pixel-space model and test pixels.

    ``kind``: ``auto`` (the callback, normalisation found in the transforms), ``inside``
    (the data left in pixels and ``Normalize`` inside the network: the reference), ``widened``
    (the old workaround: bounds widened to the normalised range, eps in normalised units),
    ``standard`` (no callback).
    """
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(normalize=kind != "inside")
    net: nn.Module = SimpleDenseNet()
    if kind == "inside":
        net = nn.Sequential(Normalize(DIGITS_MEAN, DIGITS_STD), net)
    module = DigitsLitModule(net=net)
    callbacks: list[Any] = []
    if kind in ("auto", "inside"):
        callbacks = [AdversarialTraining(PGD(eps=EPS))]
    elif kind == "widened":
        low, high = (0 - DIGITS_MEAN) / DIGITS_STD, (1 - DIGITS_MEAN) / DIGITS_STD
        callbacks = [AdversarialTraining(PGD(eps=EPS, bounds=(low, high)), normalization=None)]
    if kind == "widened":  # the callback warns that eps is then in normalised units
        with pytest.warns(UserWarning, match="normalised units"):
            quiet(L, max_epochs=epochs, callbacks=callbacks).fit(module, datamodule=dm)
    else:
        quiet(L, max_epochs=epochs, callbacks=callbacks).fit(module, datamodule=dm)
    dm.setup("fit")
    model = module.eval() if kind == "inside" else in_pixels(module)
    return model, pixel_split(dm.data_test)


def test_template_project_trains_with_eps_in_pixels_as_with_normalize_inside_the_model() -> None:
    auto, (x, y) = template_run("auto")
    inside, _ = template_run("inside")
    widened, _ = template_run("widened")
    standard, _ = template_run("standard")
    models = {"auto": auto, "inside": inside, "widened": widened, "standard": standard}
    acc = {name: pixel_robust_accuracy(model, x, y) for name, model in models.items()}
    # The callback found Normalize in the template's transforms: the same robustness (in pixels)
    # as the same run with the normalisation inside the model (measured here: 0.52 and 0.51).
    assert abs(acc["auto"] - acc["inside"]) <= 0.06, acc
    # Widening bounds trains at eps in normalised units (0.2 · 0.376 pixels): far less robust in
    # pixels (measured: 0.10), and standard training is not robust at all (0.00).
    assert acc["auto"] >= acc["widened"] + 0.25, acc
    assert acc["auto"] >= acc["standard"] + 0.35, acc
    with torch.no_grad():
        assert float((auto(x).argmax(1) == y).float().mean()) >= 0.9


class RecordingTemplateModule(DigitsLitModule):
    """The template module, recording what its training step receives (test instrumentation)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.seen: list[Tensor] = []

    def training_step(self, batch: Any, batch_idx: int) -> Any:
        if len(self.seen) < 2:
            self.seen.append(batch[0].detach().clone())
        return super().training_step(batch, batch_idx)


class CleanBatches(L.Callback):
    """Records the batches as the loader yields them (before any callback's step wrapper)."""

    def __init__(self) -> None:
        self.batches: list[Tensor] = []

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        self.batches.append(batch[0].detach().clone())


def test_the_step_receives_normalised_inputs_perturbed_by_eps_in_pixels() -> None:
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=32)
    module = RecordingTemplateModule(net=SimpleDenseNet())
    cb, recorder = AdversarialTraining(PGD(eps=EPS, steps=3), seed=0), CleanBatches()
    quiet(L, max_epochs=1, limit_train_batches=1, callbacks=[cb, recorder]).fit(module, dm)
    assert cb.normalization is not None
    assert cb.normalization.mean == (DIGITS_MEAN,) and cb.normalization.std == (DIGITS_STD,)
    assert "train_dataloader.dataset" in cb.normalization.source  # found in the real pipeline
    (seen, *_) = module.seen
    pixels = seen * DIGITS_STD + DIGITS_MEAN
    assert float(pixels.min()) >= -1e-5 and float(pixels.max()) <= 1 + 1e-5
    clean = recorder.batches[0] * DIGITS_STD + DIGITS_MEAN
    moved = (pixels - clean).abs().max()
    assert EPS / 2 < float(moved) <= EPS + 1e-5, "the perturbation is eps in pixel units"
    # nothing of the user's was changed
    assert isinstance(dm.transforms.transforms[1], transforms.Normalize)
    assert dm.transforms.transforms[1].mean == (DIGITS_MEAN,)


class RobustHistory(PL.Callback):
    """Records val/robust_acc after every validation epoch (a pytorch_lightning callback)."""

    def __init__(self) -> None:
        self.values: list[float] = []

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        self.values.append(float(trainer.callback_metrics["val/robust_acc"]))


def test_pytorch_lightning_project_with_robust_checkpointing(tmp_path: Path) -> None:
    """The pytorch_lightning project, unmodified: PGD-AT, robust validation, and the checkpoint
    with the best robust accuracy, all with its own Trainer and ModelCheckpoint."""
    eps = 0.1
    PL.seed_everything(0, verbose=False)
    dm = DigitsData()
    module = LitClassifier()
    evaluation = RobustEvaluation(PGD(eps=eps, steps=5, random_start=False), n_examples=100)
    best = PL.callbacks.ModelCheckpoint(
        dirpath=tmp_path, monitor="val/robust_acc", mode="max", save_top_k=1
    )
    history = RobustHistory()
    trainer = quiet(
        PL,
        max_epochs=10,
        limit_val_batches=2,
        enable_checkpointing=True,
        callbacks=[AdversarialTraining(PGD(eps=eps, steps=3)), evaluation, best, history],
    )
    trainer.fit(module, datamodule=dm)
    assert evaluation.space.normalization is not None  # found in the validation dataset
    assert best.best_model_score is not None
    assert float(best.best_model_score) == pytest.approx(max(history.values))
    x, y = all_pixels(dm.test_set)
    robust = pixel_robust_accuracy(in_pixels(module), x, y, eps)
    PL.seed_everything(0, verbose=False)
    standard = LitClassifier()
    quiet(PL, max_epochs=10).fit(standard, datamodule=DigitsData())
    # measured: 0.66 against 0.49
    assert robust >= pixel_robust_accuracy(in_pixels(standard), x, y, eps) + 0.08


def test_robust_evaluation_attacks_the_pixels_of_normalised_validation_data() -> None:
    """val/robust_acc is the evaluation pipeline's number for the same weights and examples.

    A random-start attack: the callback names its examples 0..n-1 (stable across epochs and
    batches), so its number equals ``evaluate_attacks`` run by hand in pixel space with the same
    ids, counted as Croce & Hein do (correct clean and after the attack).
    """
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=50)
    module = DigitsLitModule(net=SimpleDenseNet())
    attack = PGD(eps=0.1, steps=5, seed=3)
    evaluation = RobustEvaluation(attack, n_examples=100, every_n_epochs=1, seed=3)
    trainer = quiet(L, max_epochs=2, limit_val_batches=2, callbacks=[evaluation])
    trainer.fit(module, datamodule=dm)
    x, y = pixel_split(dm.data_val)
    x, y = x[:100], y[:100]
    model = in_pixels(module)
    by_hand = PGD(eps=0.1, steps=5, seed=3)
    res = evaluate_attacks(model, (x, y), {"pgd": by_hand}, progress=False, batch_size=64)
    assert evaluation.last_value == pytest.approx(res.robust_accuracy["pgd"], abs=1e-6)
    assert 0.05 < evaluation.last_value < res.clean_accuracy  # the attack did something
    with torch.no_grad():  # an example wrong clean never counts, whatever the attack did
        clean = model(x).argmax(1) == y
    assert bool((res.robust_correct["pgd"] <= clean).all())
    # The next evaluation of the same weights gives the same number (stable example ids).
    trainer.validate(module, datamodule=dm, verbose=False)
    assert evaluation.last_value == pytest.approx(res.robust_accuracy["pgd"], abs=1e-6)


def test_free_at_on_normalised_data_perturbs_pixels() -> None:
    L.seed_everything(0, verbose=False)
    dm = DigitsDataModule(batch_size=32)
    module = RecordingTemplateModule(net=SimpleDenseNet())
    cb = FreeAdversarialTraining(eps=EPS, replays=2)
    quiet(L, max_epochs=1, limit_train_batches=1, callbacks=[cb]).fit(module, datamodule=dm)
    first, second = module.seen  # the two replays of the first minibatch
    moved = ((second - first) * DIGITS_STD).abs().max()  # delta in pixels after one update
    assert EPS / 2 < float(moved) <= EPS + 1e-5
    assert cb.delta is not None and float(cb.delta.abs().max()) <= EPS + 1e-6


def test_a_module_that_is_not_a_classifier_gets_a_clear_error() -> None:
    PL.seed_everything(0, verbose=False)
    trainer = quiet(PL, max_epochs=1, limit_train_batches=1)
    trainer.callbacks.append(AdversarialTraining(PGD(eps=EPS, steps=1)))
    with pytest.raises(PL.utilities.exceptions.MisconfigurationException) as info:
        trainer.fit(LitAutoEncoder(), datamodule=DigitsData())
    message = str(info.value)
    assert "forward to return logits of shape (batch, classes)" in message
    assert "mat1 and mat2" in message  # what the module's forward raised, quoted
    assert "output_key=" in message and "forward_fn=" in message


def test_output_key_or_forward_fn_point_the_callback_at_the_logits() -> None:
    """A module whose forward returns a dict: a clear error, then output_key or forward_fn."""

    class DictOutput(LitClassifier):
        def forward(self, x: Tensor) -> dict[str, Tensor]:  # type: ignore[override]
            return {"features": self.features(x), "logits": self.head(self.features(x))}

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            x, y = batch
            return torch.nn.functional.cross_entropy(self(x)["logits"], y)

    PL.seed_everything(0, verbose=False)
    with pytest.raises(PL.utilities.exceptions.MisconfigurationException, match="output_key"):
        _fit_with(DictOutput(), AdversarialTraining(PGD(eps=EPS, steps=1)))
    _fit_with(DictOutput(), AdversarialTraining(PGD(eps=EPS, steps=1), output_key="logits"))
    _fit_with(
        DictOutput(),
        AdversarialTraining(PGD(eps=EPS, steps=1), forward_fn=_logits_of),
    )


def _logits_of(module: nn.Module, x: Tensor) -> Tensor:
    return module(x)["logits"]  # type: ignore[no-any-return]


def _fit_with(module: Any, callback: Any) -> None:
    quiet(PL, max_epochs=1, limit_train_batches=2, callbacks=[callback]).fit(
        module, datamodule=DigitsData()
    )


def test_scheduled_eps_is_in_the_csv_log_at_every_epoch(tmp_path: Path) -> None:
    from advtrain.schedules import Linear

    L.seed_everything(0, verbose=False)
    cb = AdversarialTraining(PGD(eps=EPS, steps=1), schedules={"eps": Linear(0.0, EPS, ramp=1.0)})
    logger = L.loggers.CSVLogger(tmp_path, name="run", version="")
    # 20 batches an epoch, log_every_n_steps=50: step-level rows are rare
    trainer = quiet(L, max_epochs=4, logger=logger, log_every_n_steps=50, callbacks=[cb])
    trainer.fit(DigitsLitModule(net=SimpleDenseNet()), datamodule=DigitsDataModule())
    with open(tmp_path / "run" / "metrics.csv") as f:
        rows = [r for r in csv.DictReader(f) if r.get("adv/eps")]
    epochs = sorted({int(r["epoch"]) for r in rows})
    assert epochs == [0, 1, 2, 3]
    values = [float(r["adv/eps"]) for r in rows]
    assert values == sorted(values) and values[-1] == pytest.approx(EPS, rel=0.06)


def test_clean_accuracy_is_logged_next_to_the_adversarial_training_accuracy(
    tmp_path: Path,
) -> None:
    L.seed_everything(0, verbose=False)
    cb = AdversarialTraining(PGD(eps=EPS, steps=2), clean_acc_examples=16)
    logger = L.loggers.CSVLogger(tmp_path, name="run", version="")
    trainer = quiet(L, max_epochs=3, logger=logger, callbacks=[cb])
    trainer.fit(DigitsLitModule(net=SimpleDenseNet()), datamodule=DigitsDataModule())
    metrics = trainer.callback_metrics
    # the module's own train/acc is its accuracy on the adversarial inputs it trained on
    assert float(metrics["adv/clean_acc"]) > float(metrics["train/acc"]) + 0.05
