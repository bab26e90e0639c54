"""Drop-in subclasses of torch.nn layers that compute the same function faster in LeNet's CPU training step.

Each keeps its torch.nn base class (so isinstance checks, state dicts and TorchScript/ONNX export see the stock
layer) and changes only how the numbers are computed.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class InplaceSigmoid(nn.Sigmoid):
    """Sigmoid written over its input. Its backward reads only its output and the layers before it (conv,
    linear, batch norm) do not read theirs, so the pre-activation copy need not exist: one activation-sized
    tensor less to write and read back per layer and step, about 4% of a CPU training step."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.sigmoid_(input)


class InplaceTanh(nn.Tanh):
    """Tanh written over its input, for the same reason as :class:`InplaceSigmoid`."""

    def forward(self, input: Tensor) -> Tensor:
        return torch.tanh_(input)


def _windows(images: Tensor) -> Tensor:
    """An N x C x H x W tensor (contiguous or channels_last) as an N x C x H/2 x 2 x W/2 x 2 view: dims 3 and 5
    pick the row and the column inside each 2x2 window, whatever the memory layout."""
    n, c, h, w = images.shape
    if images.is_contiguous():
        return images.view(n, c, h // 2, 2, w // 2, 2)
    return images.permute(0, 2, 3, 1).view(n, h // 2, 2, w // 2, 2, c).permute(0, 5, 1, 2, 3, 4)


class _Halve(torch.autograd.Function):
    """2x2, stride-2 average pooling of a CPU tensor as whole-row additions, in either memory layout.

    ATen's CPU pooling kernels walk each window element by element (channels_last ones vectorise over
    channels, and LeNet has 6): 0.6-0.8 ms forward and 0.4-0.9 ms backward per training step for the first
    pooling layer. Here the forward adds the two image rows of every window (long contiguous runs), then the
    two pixels; the backward spreads each gradient over its window with strided copies; together about 0.4 ms.
    Sums round as (a + c) + (b + d) instead of ((a + b) + c) + d, so outputs may differ from
    ``F.avg_pool2d`` in the last bit; gradients are identical.
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, images: Tensor) -> Tensor:
        ctx.layout = torch.contiguous_format if images.is_contiguous() else torch.channels_last
        windows = _windows(images)
        rows = windows[:, :, :, 0] + windows[:, :, :, 1]
        return (rows[..., 0] + rows[..., 1]).mul_(0.25)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad_pooled: Tensor) -> Tensor:
        n, c, h, w = grad_pooled.shape
        share = grad_pooled.mul(0.25)
        grad = torch.empty(
            n, c, 2 * h, 2 * w, dtype=grad_pooled.dtype, device=grad_pooled.device, memory_format=ctx.layout
        )
        windows = _windows(grad)
        windows[:, :, :, 0, :, 0] = share
        windows[:, :, :, 0, :, 1] = share
        windows[:, :, :, 1] = windows[:, :, :, 0]
        return grad


class AvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` that takes the :class:`_Halve` path for LeNet's case (2x2 windows, stride 2, no padding,
    even height and width, a contiguous or channels_last CPU tensor, eager mode) and ATen's kernel otherwise.

    TorchScript, ``torch.compile`` and ``torch.export`` (so ONNX) see the stock operator: exported files keep one
    AveragePool node, and compilers fuse pooling on their own.
    """

    def forward(self, input: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._halves(input):
            return self._halve(input)
        return F.avg_pool2d(  # nn.AvgPool2d's own forward; TorchScript has no super()
            input,
            self.kernel_size,
            self.stride,
            self.padding,
            self.ceil_mode,
            self.count_include_pad,
            self.divisor_override,
        )

    @torch.jit.unused
    def _halve(self, input: Tensor) -> Tensor:
        return _Halve.apply(input)

    @torch.jit.unused
    def _halves(self, input: Tensor) -> bool:
        return (
            not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and self.kernel_size in (2, (2, 2))
            and self.stride in (2, (2, 2))
            and self.padding in (0, (0, 0))
            and not self.ceil_mode
            and self.divisor_override is None
            and input.dim() == 4
            and input.shape[2] % 2 == 0
            and input.shape[3] % 2 == 0
            and input.device.type == "cpu"
            and (input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last))
        )


class _WeightGradChannelsLast(torch.autograd.Function):
    """A contiguous (NCHW) convolution whose weight gradient oneDNN computes from channels_last copies.

    Measured on LeNet's second convolution (6 -> 16 channels, batch 256): oneDNN's weight-gradient kernel takes
    1.25 ms on NCHW data and 0.39 ms (0.5 ms with the copies) on NHWC data, while the forward pass and the input
    gradient are faster in NCHW (0.34 vs 0.47 ms and 0.81 vs 1.36 ms). With one input channel NCHW wins
    throughout, so :class:`Conv2d` takes this path only for several input channels.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx, images: Tensor, weight: Tensor, bias: Tensor | None, conv: "Conv2d"
    ) -> Tensor:
        ctx.save_for_backward(images, weight)
        ctx.conv, ctx.has_bias = conv, bias is not None
        return F.conv2d(images, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)

    @staticmethod
    def backward(
        ctx: torch.autograd.function.FunctionCtx, grad_output: Tensor
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None, None]:
        images, weight = ctx.saved_tensors
        conv = ctx.conv
        bias_sizes = [weight.shape[0]] if ctx.has_bias else None
        needs_images, needs_weight, needs_bias, _ = ctx.needs_input_grad

        def gradients(grad: Tensor, inputs: Tensor, weights: Tensor, mask: list[bool]) -> tuple[Tensor, ...]:
            return torch.ops.aten.convolution_backward(
                grad,
                inputs,
                weights,
                bias_sizes,
                conv.stride,
                conv.padding,
                conv.dilation,
                False,
                [0, 0],
                conv.groups,
                mask,
            )

        grad_images = gradients(grad_output, images, weight, [True, False, False])[0] if needs_images else None
        grad_weight = grad_bias = None
        if needs_weight or needs_bias:  # needs_bias is False when there is no bias
            nhwc = [t.contiguous(memory_format=torch.channels_last) for t in (grad_output, images, weight)]
            _, grad_weight, grad_bias = gradients(*nhwc, [False, needs_weight, needs_bias])
            grad_weight = grad_weight.contiguous() if grad_weight is not None else None
        return grad_images, grad_weight, grad_bias, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` that, training on the CPU with several input channels, computes its weight gradient by
    :class:`_WeightGradChannelsLast`; everywhere else (and for TorchScript, compilers and exporters) it is the
    stock layer."""

    def forward(self, input: Tensor) -> Tensor:
        if not torch.jit.is_scripting() and self._splits_layouts(input):
            return self._split_layouts(input)
        return self._conv_forward(input, self.weight, self.bias)

    @torch.jit.unused
    def _split_layouts(self, input: Tensor) -> Tensor:
        return _WeightGradChannelsLast.apply(input, self.weight, self.bias, self)

    @torch.jit.unused
    def _splits_layouts(self, input: Tensor) -> bool:
        return (
            not torch.compiler.is_compiling()
            and not torch.jit.is_tracing()
            and torch.is_grad_enabled()
            and self.weight.requires_grad
            and self.in_channels > 1
            and self.groups == 1
            and self.padding_mode == "zeros"
            and not isinstance(self.padding, str)
            and input.dim() == 4
            and input.device.type == "cpu"
            and input.is_contiguous()
            and self.weight.is_contiguous()
        )
