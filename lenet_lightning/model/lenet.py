"""LeNet as a plain ``nn.Module`` of stock torch.nn layers, as in Dive into Deep Learning; no Lightning here.

Training on the CPU swaps in faster versions of some layers
(:func:`lenet_lightning.speed.cpu_layers.convert_to_fast_cpu_layers`); the network defined here stays stock.
"""

from torch import Tensor, nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}
POOLINGS = {"avg": nn.AvgPool2d, "max": nn.MaxPool2d}


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
        act, pool = ACTIVATIONS[activation], POOLINGS[pooling]
        c1, c2 = conv_channels
        h1, h2 = hidden

        def norm(kind: type[nn.Module], size: int) -> list[nn.Module]:
            return [kind(size)] if batch_norm else []

        def drop() -> list[nn.Module]:
            return [nn.Dropout(dropout)] if dropout > 0 else []

        self.features = nn.Sequential(
            nn.Conv2d(1, c1, kernel_size=5, padding=2), *norm(nn.BatchNorm2d, c1), act(), pool(kernel_size=2, stride=2),
            nn.Conv2d(c1, c2, kernel_size=5), *norm(nn.BatchNorm2d, c2), act(), pool(kernel_size=2, stride=2),
            nn.Flatten(),
        )  # fmt: skip
        self.classifier = nn.Sequential(
            nn.Linear(c2 * 5 * 5, h1), *norm(nn.BatchNorm1d, h1), act(), *drop(),
            nn.Linear(h1, h2), *norm(nn.BatchNorm1d, h2), act(), *drop(),
            nn.Linear(h2, num_classes),
        )  # fmt: skip
        for layer in self.modules():
            if isinstance(layer, nn.Conv2d | nn.Linear):
                nn.init.xavier_uniform_(layer.weight)

    def forward(self, images: Tensor) -> Tensor:
        """Map a batch of N x 1 x 28 x 28 images in [0, 1] to N x num_classes logits."""
        return self.classifier(self.features(images))
