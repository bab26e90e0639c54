"""LeNet matches the recipe's table: shapes, parameter count, Xavier-uniform init."""

import copy
import math

import pytest
import torch
from torch import nn

from lenet_lightning.model.lenet import LeNet

RECIPE_SHAPES = [
    ("Conv2d", (6, 28, 28)),
    ("Sigmoid", (6, 28, 28)),
    ("AvgPool2d", (6, 14, 14)),
    ("Conv2d", (16, 10, 10)),
    ("Sigmoid", (16, 10, 10)),
    ("AvgPool2d", (16, 5, 5)),
    ("Flatten", (400,)),
    ("Linear", (120,)),
    ("Sigmoid", (120,)),
    ("Linear", (84,)),
    ("Sigmoid", (84,)),
    ("Linear", (10,)),
]


def layer_kind(layer: nn.Module) -> str:
    """The torch.nn class a layer is (the in-place activations subclass theirs)."""
    return next(cls.__name__ for cls in type(layer).__mro__ if cls.__module__.startswith("torch.nn"))


def test_layer_output_shapes_match_the_recipe_table() -> None:
    model = LeNet()
    x = torch.rand(3, 1, 28, 28)
    layers = [*model.features, *model.classifier]
    assert [layer_kind(layer) for layer in layers] == [name for name, _ in RECIPE_SHAPES]
    for layer, (_, shape) in zip(layers, RECIPE_SHAPES, strict=True):
        x = layer(x)
        assert tuple(x.shape) == (3, *shape), type(layer).__name__


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


def test_unknown_activation_is_rejected_with_the_choices() -> None:
    with pytest.raises(ValueError, match="choose one of"):
        LeNet(activation="swishy")


@pytest.mark.parametrize("activation", ["sigmoid", "relu", "tanh"])
def test_in_place_activations_give_the_same_outputs_and_gradients(activation: str) -> None:
    """The activations overwrite their input; swapping in torch.nn's out-of-place ones changes no number."""
    torch.manual_seed(0)
    in_place = LeNet(activation=activation, batch_norm=True)
    out_of_place = copy.deepcopy(in_place)
    plain = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
    for block in (out_of_place.features, out_of_place.classifier):
        for index, layer in enumerate(block):
            if isinstance(layer, plain):
                block[index] = plain()
    assert not any(getattr(layer, "inplace", False) for layer in out_of_place.modules())
    images = torch.rand(16, 1, 28, 28)
    for model in (in_place, out_of_place):
        model(images).square().sum().backward()
    torch.testing.assert_close(in_place(images), out_of_place(images), rtol=0, atol=0)
    for (name, a), (_, b) in zip(in_place.named_parameters(), out_of_place.named_parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=0, atol=0, msg=name)
