"""The fast CPU layers compute what the torch.nn layers they replace compute, and fall back to them elsewhere."""

import copy
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F

from lenet_lightning.model.lenet import LeNet
from lenet_lightning.speed.cpu_layers import FastCPUAvgPool2d, FastCPUConv2d, convert_to_fast_cpu_layers

LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def pooled_with_gradient(pool, images: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    images = images.detach().requires_grad_()
    pooled = pool(images)
    (image_grad,) = torch.autograd.grad(pooled, images, grad)
    return pooled, image_grad


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("shape", [(9, 6, 28, 28), (9, 16, 10, 10), (2, 3, 4, 6)], ids=["pool1", "pool2", "odd"])
def test_two_by_two_pooling_matches_torch_in_both_layouts(layout: str, shape: tuple[int, ...]) -> None:
    """Outputs agree to float32 rounding (the four terms are added in another order); gradients exactly."""
    torch.manual_seed(0)
    pool = FastCPUAvgPool2d(kernel_size=2, stride=2)
    images = torch.randn(shape).to(memory_format=LAYOUTS[layout])
    assert pool._halves(images)
    grad = torch.randn(shape[0], shape[1], shape[2] // 2, shape[3] // 2)
    fast, fast_grad = pooled_with_gradient(pool, images, grad)
    stock, stock_grad = pooled_with_gradient(lambda x: F.avg_pool2d(x, 2), images, grad)
    torch.testing.assert_close(fast, stock)
    assert fast.is_contiguous(memory_format=LAYOUTS[layout])
    torch.testing.assert_close(fast_grad, stock_grad, rtol=0, atol=0)
    # A gradient arriving in the other layout (as after Flatten) gives the same numbers.
    other = torch.channels_last if layout == "contiguous" else torch.contiguous_format
    _, other_grad = pooled_with_gradient(pool, images, grad.contiguous(memory_format=other))
    torch.testing.assert_close(other_grad, stock_grad, rtol=0, atol=0)


def test_two_by_two_pooling_passes_gradcheck() -> None:
    images = torch.rand(2, 3, 4, 6, dtype=torch.float64).to(memory_format=torch.channels_last).requires_grad_()
    assert torch.autograd.gradcheck(FastCPUAvgPool2d(kernel_size=2, stride=2), (images,))


@pytest.mark.parametrize(
    "settings, shape",
    [
        ({"kernel_size": 3, "stride": 2}, (2, 6, 28, 28)),
        ({"kernel_size": 2, "stride": 2, "padding": 1}, (2, 6, 28, 28)),
        ({"kernel_size": 2, "stride": 2, "ceil_mode": True}, (2, 6, 27, 27)),
        ({"kernel_size": 2, "stride": 2}, (2, 6, 27, 28)),
        ({"kernel_size": 2, "stride": 2}, (6, 28, 28)),
    ],
    ids=["kernel3", "padding", "ceil_mode", "odd_height", "unbatched"],
)
def test_other_poolings_are_torchs_own(settings: dict, shape: tuple[int, ...]) -> None:
    pool = FastCPUAvgPool2d(**settings)
    images = torch.rand(shape)
    assert not pool._halves(images)
    torch.testing.assert_close(pool(images), torch.nn.AvgPool2d(**settings)(images), rtol=0, atol=0)
    # Settings the path never fits are not swapped at all; the others depend on the input, checked at run time.
    swapped = type(convert_to_fast_cpu_layers(torch.nn.AvgPool2d(**settings))) is FastCPUAvgPool2d
    assert swapped == (settings == {"kernel_size": 2, "stride": 2})


def conv_gradients(conv: torch.nn.Conv2d, images: torch.Tensor, grad: torch.Tensor) -> list[torch.Tensor]:
    conv.zero_grad()
    images = images.detach().requires_grad_(images.requires_grad)
    output = conv(images)
    output.backward(grad)
    return [output, *(p.grad for p in conv.parameters()), *([images.grad] if images.requires_grad else [])]


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("images_need_grad", [True, False])
def test_split_layout_convolution_matches_torch(bias: bool, images_need_grad: bool) -> None:
    """LeNet's second convolution: the same outputs and gradients up to float32 rounding of sums of 3,200 terms."""
    torch.manual_seed(0)
    fast = FastCPUConv2d(6, 16, kernel_size=5, bias=bias)
    stock = torch.nn.Conv2d(6, 16, kernel_size=5, bias=bias)
    stock.load_state_dict(fast.state_dict())
    images = torch.randn(32, 6, 14, 14).requires_grad_(images_need_grad)
    assert fast._splits_layouts(images)
    grad = torch.randn(32, 16, 10, 10)
    fast_results, stock_results = conv_gradients(fast, images, grad), conv_gradients(stock, images, grad)
    assert len(fast_results) == len(stock_results) == 1 + (2 if bias else 1) + images_need_grad
    for fast_result, stock_result in zip(fast_results, stock_results, strict=True):
        assert fast_result.is_contiguous()
        scale = stock_result.abs().max().item()
        torch.testing.assert_close(fast_result, stock_result, rtol=1e-5, atol=1e-5 * scale)


@pytest.mark.slow
def test_split_layout_convolution_passes_gradcheck() -> None:
    conv = FastCPUConv2d(3, 4, kernel_size=3, padding=1, stride=2, dtype=torch.float64)
    images = torch.randn(2, 3, 7, 7, dtype=torch.float64, requires_grad=True)
    assert conv._splits_layouts(images)
    assert torch.autograd.gradcheck(conv, (images,))


@pytest.mark.parametrize(
    "settings, images",
    [
        ({"in_channels": 1, "out_channels": 6, "kernel_size": 5, "padding": 2}, torch.rand(2, 1, 28, 28)),
        ({"in_channels": 6, "out_channels": 16, "kernel_size": 5, "groups": 2}, torch.rand(2, 6, 14, 14)),
        ({"in_channels": 6, "out_channels": 16, "kernel_size": 5, "padding": "same"}, torch.rand(2, 6, 14, 14)),
        (
            {"in_channels": 6, "out_channels": 16, "kernel_size": 5},
            torch.rand(2, 6, 14, 14).to(memory_format=torch.channels_last),
        ),
    ],
    ids=["one_input_channel", "groups", "same_padding", "channels_last"],
)
def test_other_convolutions_are_torchs_own(settings: dict, images: torch.Tensor) -> None:
    torch.manual_seed(0)
    conv = FastCPUConv2d(**settings)
    assert not conv._splits_layouts(images)
    stock = torch.nn.Conv2d(**settings)
    swapped = type(convert_to_fast_cpu_layers(torch.nn.Conv2d(**settings))) is FastCPUConv2d
    assert swapped == (settings == {"in_channels": 6, "out_channels": 16, "kernel_size": 5})  # layout: run time
    stock.load_state_dict(conv.state_dict())
    grad = torch.randn_like(stock(images))
    for a, b in zip(conv_gradients(conv, images, grad), conv_gradients(stock, images, grad), strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_convolution_without_gradients_is_torchs_own() -> None:
    conv = FastCPUConv2d(6, 16, kernel_size=5)
    with torch.no_grad():
        assert not conv._splits_layouts(torch.rand(2, 6, 14, 14))


def test_other_devices_take_torchs_kernels() -> None:
    """Off the CPU (a GPU, here the meta device, which needs none) both layers run the stock operator."""
    pool, conv = FastCPUAvgPool2d(kernel_size=2, stride=2), FastCPUConv2d(6, 16, kernel_size=5, device="meta")
    images = torch.rand(2, 6, 14, 14, device="meta")
    assert not pool._halves(images) and not conv._splits_layouts(images)
    assert pool(images).shape == (2, 6, 7, 7) and conv(images).shape == (2, 16, 10, 10)
    assert pool._halves(torch.rand(2, 6, 14, 14))  # the same settings on the CPU do take the path


def fast_lenet() -> torch.nn.Module:
    return convert_to_fast_cpu_layers(LeNet())


JIT_DEPRECATED = "ignore:.*torch.jit.* is deprecated:FutureWarning"


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_exporters_see_the_stock_operators() -> None:
    """torch.export (behind ONNX export) and TorchScript tracing record avg_pool2d and conv2d, not the CPU paths,
    even in training mode with gradients on."""
    net = fast_lenet()
    images = torch.rand(2, 1, 28, 28)
    exported = torch.export.export(net, (images,))
    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
    assert sum("avg_pool2d" in target for target in targets) == 2
    assert sum("conv2d" in target for target in targets) == 2
    assert not {"aten.add.Tensor", "aten.slice.Tensor", "aten.select.int"} & set(targets)
    traced = torch.jit.trace(net, images)
    assert str(traced.inlined_graph).count("aten::avg_pool2d") == 2
    assert str(traced.inlined_graph).count("aten::_convolution") == 2


@pytest.mark.filterwarnings(JIT_DEPRECATED)
def test_torchscript_and_torch_compile_run_the_stock_operators() -> None:
    """What ``python -m lenet_lightning.export format=torchscript`` and ``compile=...`` would run: ATen's operators."""
    net = fast_lenet()
    images = torch.rand(2, 1, 28, 28)
    stock = LeNet()
    stock.load_state_dict(net.state_dict())
    expected = stock(images)
    scripted = torch.jit.script(net)
    assert str(scripted.inlined_graph).count("aten::avg_pool2d") == 2
    torch.testing.assert_close(scripted(images), expected, rtol=0, atol=0)

    graphs: list[torch.fx.GraphModule] = []

    def record(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., torch.Tensor]:
        graphs.append(graph)
        return graph.forward

    logits = torch.compile(net, backend=record, fullgraph=True)(images)
    calls = [str(node.target) for graph in graphs for node in graph.graph.nodes if node.op == "call_function"]
    assert sum("avg_pool2d" in call for call in calls) == 2 and sum("conv2d" in call for call in calls) == 2
    torch.testing.assert_close(logits, expected, rtol=0, atol=0)


def autograd_node_names(output: torch.Tensor) -> list[str]:
    names, pending, seen = [], [output.grad_fn], set()
    while pending:
        node = pending.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.append(node.name())
        pending.extend(next_node for next_node, _ in node.next_functions)
    return names


def test_converted_lenet_training_on_the_cpu_takes_both_paths() -> None:
    """The recipe's network as training runs it: both poolings and the second convolution use the CPU paths;
    the stock network uses none."""
    images = torch.rand(4, 1, 28, 28)
    names = autograd_node_names(fast_lenet()(images))
    assert sum("_HalveBackward" in name for name in names) == 2
    assert sum("_WeightGradChannelsLastBackward" in name for name in names) == 1
    assert not {"_HalveBackward", "_WeightGradChannelsLastBackward"} & set(autograd_node_names(LeNet()(images)))


@pytest.mark.parametrize("stock", [torch.nn.Sigmoid(), torch.nn.Tanh(), torch.nn.ReLU()], ids=lambda layer: str(layer))
def test_in_place_activations_overwrite_their_input_and_change_no_number(stock: torch.nn.Module) -> None:
    """After a linear layer, as in LeNet: the same outputs and gradients to the last bit, and no new tensor."""
    torch.manual_seed(0)
    linear, images = torch.nn.Linear(400, 120), torch.randn(16, 400)
    fast = convert_to_fast_cpu_layers(copy.deepcopy(stock))
    results = []
    for activation in (stock, fast):
        linear.zero_grad()
        pre_activation = linear(images)
        output = activation(pre_activation)
        output.square().sum().backward()
        results.append((output, linear.weight.grad.clone(), output.data_ptr() == pre_activation.data_ptr()))
    (stock_output, stock_grad, stock_in_place), (fast_output, fast_grad, fast_in_place) = results
    torch.testing.assert_close(fast_output, stock_output, rtol=0, atol=0)
    torch.testing.assert_close(fast_grad, stock_grad, rtol=0, atol=0)
    assert fast_in_place and not stock_in_place
