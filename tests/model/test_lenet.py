"""LeNet is the recipe's network in stock torch.nn layers: shapes, parameter count, state_dict names, init."""

import math

import pytest
import torch
from torch import nn

from lenet_lightning.model.lenet import LeNet

RECIPE_SHAPES = [
    (nn.Conv2d, (6, 28, 28)),
    (nn.Sigmoid, (6, 28, 28)),
    (nn.AvgPool2d, (6, 14, 14)),
    (nn.Conv2d, (16, 10, 10)),
    (nn.Sigmoid, (16, 10, 10)),
    (nn.AvgPool2d, (16, 5, 5)),
    (nn.Flatten, (400,)),
    (nn.Linear, (120,)),
    (nn.Sigmoid, (120,)),
    (nn.Linear, (84,)),
    (nn.Sigmoid, (84,)),
    (nn.Linear, (10,)),
]
VARIANTS = [
    {},
    {"activation": "relu", "pooling": "max"},
    {"activation": "relu", "pooling": "max", "batch_norm": True},
    {"activation": "tanh", "dropout": 0.5},
    {"activation": "gelu", "batch_norm": True, "dropout": 0.1},
]


def test_layers_and_output_shapes_match_the_recipe_table() -> None:
    model = LeNet()
    x = torch.rand(3, 1, 28, 28)
    layers = [*model.features, *model.classifier]
    assert [type(layer) for layer in layers] == [kind for kind, _ in RECIPE_SHAPES]
    for layer, (_, shape) in zip(layers, RECIPE_SHAPES, strict=True):
        x = layer(x)
        assert tuple(x.shape) == (3, *shape), type(layer).__name__


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda settings: "-".join(map(str, settings.values())) or "recipe")
def test_every_layer_is_a_stock_torch_nn_layer_used_as_torch_ships_it(settings: dict) -> None:
    """No subclasses and no in-place activations: what a reader of Dive into Deep Learning expects to see."""
    model = LeNet(**settings)
    for layer in [*model.features, *model.classifier]:
        assert getattr(nn, type(layer).__name__) is type(layer)
        assert not getattr(layer, "inplace", False)


def test_state_dict_names_are_the_ones_checkpoints_store() -> None:
    assert list(LeNet().state_dict()) == [
        *("features.0.weight", "features.0.bias", "features.3.weight", "features.3.bias"),
        *("classifier.0.weight", "classifier.0.bias", "classifier.2.weight", "classifier.2.bias"),
        *("classifier.4.weight", "classifier.4.bias"),
    ]
    batch_norms = [key.removesuffix(".running_mean") for key in LeNet(batch_norm=True).state_dict() if "mean" in key]
    assert batch_norms == ["features.1", "features.5", "classifier.1", "classifier.4"]


def test_parameter_count_is_61706() -> None:
    assert sum(p.numel() for p in LeNet().parameters()) == 61_706


def test_weights_are_xavier_uniform_and_biases_pytorch_default() -> None:
    torch.manual_seed(0)
    model = LeNet()
    for layer in model.modules():
        if isinstance(layer, nn.Conv2d | nn.Linear):
            fan_in, fan_out = nn.init._calculate_fan_in_and_fan_out(layer.weight)
            xavier_bound = math.sqrt(6.0 / (fan_in + fan_out))
            assert layer.weight.abs().max() <= xavier_bound
            # Uniform on [-b, b] fills the range: the largest draw sits close to the bound.
            assert layer.weight.abs().max() > 0.9 * xavier_bound
            assert layer.bias.abs().max() <= 1 / math.sqrt(fan_in)


def test_same_seed_gives_same_initial_weights() -> None:
    torch.manual_seed(7)
    first = LeNet().state_dict()
    torch.manual_seed(7)
    second = LeNet().state_dict()
    assert all(torch.equal(first[key], second[key]) for key in first)
