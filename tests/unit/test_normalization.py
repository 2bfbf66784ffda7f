"""advtrain.normalization: the map, parsing the argument, and finding it in torchvision pipelines
(v1 and v2 transforms, datasets with transforms, Subset / random_split / ConcatDataset)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset, TensorDataset, random_split
from torchvision import transforms
from torchvision.transforms import v2

from advtrain.models import Normalize
from advtrain.models.view import ClassifierView
from advtrain.normalization import (
    Normalization,
    compose,
    find_normalization,
    in_attributes,
    in_dataset,
    looks_normalised,
    parse_normalization,
)

CIFAR = ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616))


class Images(Dataset):
    """A torchvision-style dataset of random RGB uint8 images with a ``transform``."""

    def __init__(self, transform: object = None, n: int = 6) -> None:
        self.data = np.random.default_rng(0).integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        img = Image.fromarray(self.data[i])
        return (self.transform(img) if self.transform else img), 0  # type: ignore[operator]


def test_the_map_matches_torchvision_and_round_trips() -> None:
    norm = Normalization(*CIFAR)
    pixels = torch.rand(5, 3, 4, 4)
    expected = transforms.Normalize(*CIFAR)(pixels.clone())
    assert torch.allclose(norm.normalize(pixels), expected, atol=1e-6)
    assert torch.allclose(norm.to_pixels(expected), pixels, atol=1e-6)
    assert torch.allclose(Normalize(*CIFAR)(pixels), expected, atol=1e-6)
    flat = Normalization([0.5], [0.25])  # one value for every feature of flat inputs
    assert torch.allclose(flat.normalize(torch.ones(2, 7)), torch.full((2, 7), 2.0))
    assert norm.as_dict() == {"mean": list(CIFAR[0]), "std": list(CIFAR[1]), "source": "declared"}


def test_bad_values_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="std must be > 0"):
        Normalization([0.5], [0.0])
    with pytest.raises(ValueError, match="mean has 2 values and std 3"):
        Normalization([0.5, 0.5], [0.2, 0.2, 0.2])
    with pytest.raises(ValueError, match="finite"):
        Normalization([float("nan")], [1.0])
    with pytest.raises(TypeError, match="numbers"):
        Normalization(["a"], [1.0])  # type: ignore[list-item]
    with pytest.raises(ValueError, match=r"3 channels .* shape \(2, 1, 4, 4\)"):
        Normalization(*CIFAR).check(torch.zeros(2, 1, 4, 4))


def test_parse_normalization() -> None:
    assert parse_normalization("auto") == "auto"
    assert parse_normalization(None) is None and parse_normalization("none") is None
    assert parse_normalization(CIFAR) == Normalization(*CIFAR)
    assert parse_normalization({"mean": [0.1], "std": [0.3]}) == Normalization([0.1], [0.3])
    with pytest.raises(ValueError, match="'auto', 'none'"):
        parse_normalization("imagenet")
    with pytest.raises(ValueError, match="exactly the keys"):
        parse_normalization({"mean": [0.1], "sd": [0.3]})
    with pytest.raises(TypeError):
        parse_normalization(3.0)


@pytest.mark.parametrize("api", ["v1", "v2"])
def test_found_in_a_dataset_transform_through_wrappers(api: str) -> None:
    if api == "v1":
        pipeline = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*CIFAR)])
    else:
        pipeline = v2.Compose(
            [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(*CIFAR)]
        )
    base = Images(pipeline)
    train, _ = random_split(ConcatDataset([base, Images(pipeline)]), [8, 4])
    found = in_dataset(Subset(train, [0, 1]), "train")
    assert found == Normalization(*CIFAR)
    assert found is not None and "datasets[0].transform" in found.source
    # what the found map undoes is what the pipeline did
    x, _ = base[0]
    raw = torch.as_tensor(base.data[0]).permute(2, 0, 1).float() / 255
    assert torch.allclose(found.to_pixels(x.unsqueeze(0))[0], raw, atol=1e-6)


def test_two_normalisations_in_a_row_compose() -> None:
    first, second = Normalization([0.5], [0.5]), Normalization([0.1], [2.0])
    pipeline = transforms.Compose([transforms.Normalize([0.5], [0.5]), nn_sequential()])
    found = in_dataset(Images(pipeline))
    x = torch.rand(3, 1, 2, 2)
    both = second.normalize(first.normalize(x))
    assert found is not None and torch.allclose(found.normalize(x), both, atol=1e-6)
    assert compose(first, second) == found


def nn_sequential() -> torch.nn.Sequential:
    return torch.nn.Sequential(transforms.Normalize([0.1], [2.0]))


def test_concatenated_datasets_that_disagree_are_an_error() -> None:
    a = Images(transforms.Compose([transforms.ToTensor(), transforms.Normalize(*CIFAR)]))
    half = transforms.Normalize([0.5] * 3, [0.5] * 3)
    b = Images(transforms.Compose([transforms.ToTensor(), half]))
    with pytest.raises(ValueError, match="normalise differently"):
        in_dataset(ConcatDataset([a, b]))


def test_found_on_a_data_module_attribute_and_not_where_there_is_none() -> None:
    class TemplateLike:
        def __init__(self) -> None:
            self.transforms = transforms.Compose(
                [transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))]
            )
            self.batch_size = 64

    found = in_attributes(TemplateLike(), "datamodule")
    assert found == Normalization([0.1307], [0.3081])
    assert found is not None and found.source == "datamodule.transforms.transforms[1]"
    plain = TensorDataset(torch.rand(4, 1, 2, 2), torch.zeros(4, dtype=torch.long))
    assert find_normalization([(plain, "train")], [(object(), "dm")]) is None
    # datasets first: what the loader applies wins over an attribute
    other = Images(transforms.Compose([transforms.ToTensor(), transforms.Normalize(*CIFAR)]))
    assert find_normalization([(other, "train")], [(TemplateLike(), "dm")]) == Normalization(*CIFAR)


def test_looks_normalised() -> None:
    pixels = torch.rand(16, 3, 8, 8)
    assert "negative" not in (looks_normalised(pixels) or "")
    normalised = Normalization(*CIFAR).normalize(pixels)
    reason = looks_normalised(normalised)
    assert reason is not None and "negative values" in reason


def test_classifier_view_normalises_and_selects_the_logits() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(48, 5))
    norm = Normalization(*CIFAR)
    x = torch.rand(2, 3, 4, 4)
    view = ClassifierView(net, norm)
    assert torch.allclose(view(x), net(norm.normalize(x)), atol=1e-6)
    assert ClassifierView.of(net) is net  # nothing to adapt: no wrapper

    class Dict(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(x), "aux": x}

    assert torch.equal(ClassifierView(Dict(), output_key="logits")(x), net(x))
    fn_view = ClassifierView(Dict(), forward_fn=lambda m, z: m(z)["logits"])
    assert torch.equal(fn_view(x), net(x))
