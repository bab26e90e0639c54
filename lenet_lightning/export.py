"""``python -m lenet_lightning.export ckpt_path=... format=onnx|torchscript``: export and check a checkpoint.

Torch is imported only once a checkpoint is exported, so ``--help`` stays quick.
"""

import sys

import hydra
from omegaconf import DictConfig

from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.inference.export import ExportCheckError, export


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def main(cfg: DictConfig) -> None:
    """Export one checkpoint and print the check of the exported model against PyTorch."""
    try:
        result = export(cfg.ckpt_path, cfg.format, cfg.output, cfg.data_dir, cfg.tolerance)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except ExportCheckError as error:
        print(f"export check failed: {error}", file=sys.stderr)
        sys.exit(1)
    print("\n".join(result.summary_lines()))


if __name__ == "__main__":
    main()
