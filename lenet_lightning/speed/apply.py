"""The one entry point that applies the speed options of a config to a built LightningModule.

The LightningModule holds the recipe only; how fast it runs is decided here: the captured CUDA step, the
fast CPU layers, the memory format and ``torch.compile``. Each is opt-in or measured in docs/performance.md.
"""

import torch
from omegaconf import DictConfig

from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.speed.cpu_layers import convert_to_fast_cpu_layers
from lenet_lightning.speed.cuda_graph import GraphedClassifier


def with_speed_options(module: LeNetClassifier, cfg: DictConfig) -> LeNetClassifier:
    """``module`` set up to train as ``cfg`` asks (``cuda_graph``, ``fast_cpu_layers``, ``memory_format``, ``compile``).

    Returns a :class:`GraphedClassifier` holding the same weights for ``cuda_graph=true``, else ``module`` itself.
    """
    if cfg.cuda_graph:
        module = GraphedClassifier.of(module)
    if cfg.fast_cpu_layers:  # faster CPU training kernels; GPUs, compilers and exporters see the stock ones
        convert_to_fast_cpu_layers(module.net)
    if cfg.memory_format == "channels_last":
        # In place, before any optimizer or strategy sees the parameters; moving to a device keeps the layout.
        module.net.to(memory_format=torch.channels_last)
    if cfg.compile:
        # In place: the network's forward and backward are compiled (CUDA graphs with "reduce-overhead"),
        # while metric updates stay eager and the state_dict keeps its plain parameter names.
        module.net.compile(mode=cfg.compile)
    return module
