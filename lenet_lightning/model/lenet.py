"""LeNet as a plain ``nn.Module``: no Lightning here, so it can be reused and exported on its own."""

from functools import partial

from torch import Tensor, nn

from lenet_lightning.speed.cpu_layers import AvgPool2d, Conv2d, InplaceSigmoid, InplaceTanh

# GELU's backward reads its input, so it cannot overwrite it.
ACTIVATIONS = {
    "sigmoid": InplaceSigmoid,
    "relu": partial(nn.ReLU, inplace=True),
    "gelu": nn.GELU,
    "tanh": InplaceTanh,
}
POOLINGS = {"avg": AvgPool2d, "max": nn.MaxPool2d}


class LeNet(nn.Module):
    """Two conv blocks and three linear layers; the defaults are the classic LeNet of the recipe.

    Activation, pooling, batch norm and dropout are arguments, so variants are configs rather than classes.
    """

    def __init__(
        self,
        activation: str = "sigmoid",
        pooling: str = "avg",
        batch_norm: bool = False,
        dropout: float = 0.0,
        conv_channels: tuple[int, int] = (6, 16),
        hidden: tuple[int, int] = (120, 84),
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {sorted(POOLINGS)}")
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]
        c1, c2 = conv_channels
        h1, h2 = hidden

        def norm(kind: type[nn.Module], size: int) -> list[nn.Module]:
            return [kind(size)] if batch_norm else []

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        self.features = nn.Sequential(
            Conv2d(1, c1, kernel_size=5, padding=2),
            *norm(nn.BatchNorm2d, c1),
            act(),
            pool(kernel_size=2, stride=2),
            Conv2d(c1, c2, kernel_size=5),
            *norm(nn.BatchNorm2d, c2),
            act(),
            pool(kernel_size=2, stride=2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 5 * 5, h1),
            *norm(nn.BatchNorm1d, h1),
            act(),
            *drop(),
            nn.Linear(h1, h2),
            *norm(nn.BatchNorm1d, h2),
            act(),
            *drop(),
            nn.Linear(h2, num_classes),
        )
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(layer.weight)

    def forward(self, images: Tensor) -> Tensor:
        """Map a batch of N x 1 x 28 x 28 images in [0, 1] to N x num_classes logits."""
        return self.classifier(self.features(images))
