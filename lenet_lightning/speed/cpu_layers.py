"""Faster versions of LeNet's torch.nn layers for CPU training, swapped in by :func:`convert_to_fast_cpu_layers`.

Each is a subclass of the torch.nn layer it replaces and computes the same function; only how the numbers are
computed changes, and only in eager CPU training. Why each exists, with measurements: docs/performance.md.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def convert_to_fast_cpu_layers(module: nn.Module) -> nn.Module:
    """Swap ``module``'s stock layers, in place, for the faster CPU versions below; return ``module``.

    Like ``nn.SyncBatchNorm.convert_sync_batchnorm``, for a network built from stock layers: sigmoid, tanh and
    ReLU start writing over their input, 2x2 stride-2 average poolings and convolutions with several input
    channels get the CPU paths. Each layer keeps its identity (its class changes, as ``torch.nn.utils.parametrize``
    does it), so parameters, optimizers, hooks and state_dict keys are unaffected. The in-place activations
    assume, as ``nn.ReLU(inplace=True)`` does, that nothing else reads an activation's input (true of LeNet).
    """
    for layer in module.modules():
        kind = type(layer)  # exact types: subclasses may compute something else
        if kind is nn.Sigmoid:
            layer.__class__ = InplaceSigmoid
        elif kind is nn.Tanh:
            layer.__class__ = InplaceTanh
        elif kind is nn.ReLU:
            layer.inplace = True
        elif kind is nn.AvgPool2d and FastCPUAvgPool2d.suits(layer):
            layer.__class__ = FastCPUAvgPool2d
        elif kind is nn.Conv2d and FastCPUConv2d.suits(layer):
            layer.__class__ = FastCPUConv2d
    return module


class InplaceSigmoid(nn.Sigmoid):
    """Sigmoid written over its input: its backward reads only its output, so the input need not be kept."""

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

    ATen's CPU kernels walk each window element by element. Sums round as (a + c) + (b + d) instead of
    ((a + b) + c) + d, so outputs may differ from ``F.avg_pool2d`` in the last bit; gradients are identical.
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


class FastCPUAvgPool2d(nn.AvgPool2d):
    """``nn.AvgPool2d`` that pools 2x2 windows by :class:`_Halve` on contiguous or channels_last CPU tensors in
    eager mode, and by ATen's kernel otherwise: TorchScript, ``torch.compile`` and ``torch.export`` (so ONNX)
    see the stock operator."""

    @staticmethod
    def suits(pool: nn.AvgPool2d) -> bool:
        """Whether ``pool``'s settings are the ones :class:`_Halve` computes: 2x2 windows, stride 2, no padding."""
        return (
            pool.kernel_size in (2, (2, 2))
            and pool.stride in (2, (2, 2))
            and pool.padding in (0, (0, 0))
            and not pool.ceil_mode
            and pool.divisor_override is None
        )

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
            and self.suits(self)
            and input.dim() == 4
            and input.shape[2] % 2 == 0
            and input.shape[3] % 2 == 0
            and input.device.type == "cpu"
            and (input.is_contiguous() or input.is_contiguous(memory_format=torch.channels_last))
        )


class _WeightGradChannelsLast(torch.autograd.Function):
    """A contiguous (NCHW) convolution whose weight gradient oneDNN computes from channels_last copies.

    oneDNN's CPU weight-gradient kernel is several times faster on NHWC data, while the forward pass and the
    input gradient are faster on NCHW data.
    """

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        images: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        conv: "FastCPUConv2d",
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


class FastCPUConv2d(nn.Conv2d):
    """``nn.Conv2d`` that, training in eager mode on the CPU, computes its weight gradient by
    :class:`_WeightGradChannelsLast`; everywhere else (GPUs, no_grad, TorchScript, compilers, exporters) it is
    the stock layer."""

    @staticmethod
    def suits(conv: nn.Conv2d) -> bool:
        """Whether the path can pay for ``conv``: with one input channel NCHW is faster throughout."""
        return (
            conv.in_channels > 1
            and conv.groups == 1
            and conv.padding_mode == "zeros"
            and not isinstance(conv.padding, str)
        )

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
            and self.suits(self)
            and input.dim() == 4
            and input.device.type == "cpu"
            and input.is_contiguous()
            and self.weight.is_contiguous()
        )
