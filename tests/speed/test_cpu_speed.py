"""The CPU speed settings: the fast-layer swap, the memory_format knob and freed host memory kept for reuse."""

import copy
import resource
from pathlib import Path

import pytest
import torch
from torch import nn

from lenet_lightning.inference.checkpoint import load_checkpoint
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.cpu_layers import (
    FastCPUAvgPool2d,
    FastCPUConv2d,
    InplaceSigmoid,
    InplaceTanh,
    convert_to_fast_cpu_layers,
)
from lenet_lightning.speed.host_memory import keep_freed_host_memory
from lenet_lightning.training.run import build, fit

FAST_RECIPE = [
    nn.Conv2d,  # one input channel: NCHW is faster throughout, so it stays stock
    InplaceSigmoid,
    FastCPUAvgPool2d,
    FastCPUConv2d,
    InplaceSigmoid,
    FastCPUAvgPool2d,
    nn.Flatten,
    nn.Linear,
    InplaceSigmoid,
    nn.Linear,
    InplaceSigmoid,
    nn.Linear,
]
VARIANTS = [
    {},
    {"activation": "tanh"},
    {"activation": "relu", "pooling": "max", "batch_norm": True},
    {"activation": "gelu", "dropout": 0.5},
]


def layer_types(net: LeNet) -> list[type]:
    return [type(layer) for layer in [*net.features, *net.classifier]]


def is_stock(net: nn.Module) -> bool:
    return all(getattr(nn, type(layer).__name__, None) is type(layer) for layer in net.modules() if layer is not net)


def test_conversion_swaps_the_recipes_layers_in_place_and_keeps_its_parameters() -> None:
    net = LeNet()
    layers, parameters, state = list(net.modules()), list(net.parameters()), net.state_dict()
    assert convert_to_fast_cpu_layers(net) is net
    assert layer_types(net) == FAST_RECIPE
    assert list(net.modules()) == layers and all(a is b for a, b in zip(net.parameters(), parameters, strict=True))
    assert net.state_dict().keys() == state.keys()


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda settings: "-".join(map(str, settings.values())) or "recipe")
def test_conversion_touches_only_the_layers_it_has_a_faster_version_of(settings: dict) -> None:
    stock = LeNet(**settings)
    fast = convert_to_fast_cpu_layers(copy.deepcopy(stock))
    swaps = {
        nn.Sigmoid: InplaceSigmoid,
        nn.Tanh: InplaceTanh,
        nn.AvgPool2d: FastCPUAvgPool2d,
    }
    for before, after in zip([*stock.features, *stock.classifier], [*fast.features, *fast.classifier], strict=True):
        expected = swaps.get(type(before), type(before))
        if isinstance(before, nn.Conv2d) and before.in_channels > 1:  # the second convolution
            expected = FastCPUConv2d
        assert type(after) is expected
        assert getattr(after, "inplace", False) == isinstance(before, nn.ReLU)


@pytest.mark.parametrize("settings", VARIANTS, ids=lambda settings: "-".join(map(str, settings.values())) or "recipe")
def test_converted_network_computes_the_stock_outputs_and_gradients(settings: dict) -> None:
    """Equal up to float32 rounding: the pooling adds each window's terms in another order and the weight
    gradient comes from another kernel; the in-place activations change no number (tests/test_layers.py)."""
    torch.manual_seed(0)
    stock = LeNet(**settings)
    fast = convert_to_fast_cpu_layers(copy.deepcopy(stock))
    images = torch.rand(32, 1, 28, 28)
    logits = []
    for net in (stock, fast):
        torch.manual_seed(1)  # the same dropout masks
        logits.append(net(images))
        logits[-1].square().sum().backward()
    torch.testing.assert_close(logits[1], logits[0])
    stock_grads, fast_grads = layer_gradients(stock), layer_gradients(fast)
    assert stock_grads.keys() == fast_grads.keys()
    for name, stock_grad in stock_grads.items():
        scale = stock_grad.abs().max().item()
        torch.testing.assert_close(fast_grads[name], stock_grad, rtol=1e-5, atol=1e-5 * scale, msg=name)


def layer_gradients(net: nn.Module) -> dict[str, torch.Tensor]:
    """Each layer's parameter gradients as one vector, compared at the layer's scale: a bias before batch norm
    has a gradient of zero plus the rounding of its weight's sums."""
    return {
        name: torch.cat([p.grad.flatten() for p in layer.parameters(recurse=False)])
        for name, layer in net.named_modules()
        if next(layer.parameters(recurse=False), None) is not None
    }


@pytest.mark.parametrize("fast_cpu_layers", [True, False])
def test_config_key_decides_whether_training_swaps_the_layers(make_config, fast_cpu_layers: bool) -> None:
    _, module, _ = build(make_config("accelerator=cpu", f"fast_cpu_layers={fast_cpu_layers}"))
    assert layer_types(module.net) == (FAST_RECIPE if fast_cpu_layers else layer_types(LeNet()))
    assert is_stock(module.net) != fast_cpu_layers


def test_a_checkpoint_trained_with_fast_layers_loads_as_the_stock_network(make_config) -> None:
    """Evaluation, prediction and export rebuild the network from the checkpoint: stock layers, the same numbers."""
    cfg = make_config("accelerator=cpu", "epochs=1")
    assert cfg.fast_cpu_layers
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    loaded = load_checkpoint(str(Path(cfg.output_dir) / "checkpoints" / "last.ckpt")).module
    assert is_stock(loaded.net) and not is_stock(module.net)
    images = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(loaded.net(images), module.net.eval()(images))


def conv2_weight(module) -> torch.Tensor:
    return module.net.features[3].weight  # 16 x 6 x 5 x 5: its two layouts have different strides


def test_channels_last_lays_weights_out_so_and_saves_plain_weights(make_config) -> None:
    cfg = make_config("accelerator=cpu", "epochs=1", "memory_format=channels_last")
    datamodule, module, trainer = build(cfg)
    trainer.fit(module, datamodule=datamodule)
    weight = conv2_weight(module)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    checkpoint = torch.load(Path(cfg.output_dir) / "checkpoints" / "last.ckpt", weights_only=True)
    plain = LeNet()
    plain.load_state_dict({key.removeprefix("net."): value for key, value in checkpoint["state_dict"].items()})
    images = torch.rand(8, 1, 28, 28)
    torch.testing.assert_close(plain.eval()(images), module.net.eval()(images))


def test_default_memory_format_keeps_the_default_layout(make_config) -> None:
    datamodule, module, trainer = build(make_config("accelerator=cpu", "epochs=1"))
    trainer.fit(module, datamodule=datamodule)
    assert conv2_weight(module).is_contiguous()


@pytest.mark.slow
def test_channels_last_trains_the_same_model_as_the_default_layout(make_config, tmp_path: Path) -> None:
    """Only the order of floating-point sums differs between the layouts, so the metrics agree closely."""
    runs = [
        fit(make_config("accelerator=cpu", "epochs=3", f"memory_format={layout}", output_dir=tmp_path / layout))
        for layout in ("channels_last", "contiguous")
    ]
    channels_last, contiguous = runs
    assert channels_last.train_loss == pytest.approx(contiguous.train_loss, rel=1e-3)
    assert channels_last.train_acc == pytest.approx(contiguous.train_acc, abs=0.02)
    assert channels_last.test_acc == pytest.approx(contiguous.test_acc, abs=0.02)


def test_freed_blocks_are_reused_instead_of_faulted_in_again() -> None:
    """Twenty 8 MB activations allocated and freed in turn: kept for reuse, all of them together fault in fewer
    pages than one block has (with glibc's defaults a fresh process faulted in about eight blocks' worth)."""
    if not keep_freed_host_memory():
        pytest.skip("needs glibc's malloc")
    block = 2**21  # float32 elements: 8 MB, below the kept-memory threshold like LeNet's activations
    torch.ones(block)  # the first block may grow the heap once
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(20):
        torch.ones(block)  # written in full, so every page of it is touched
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    assert faults < block * 4 // resource.getpagesize()
