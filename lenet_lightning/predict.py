"""``python -m lenet_lightning.predict ckpt_path=... inputs=...``: classify your own pictures.

Torch and Lightning are imported only once there is something to classify, so ``--help`` stays quick.
"""

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.inference.predict import TOP_K, predict, write_csv


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def main(cfg: DictConfig) -> None:
    """Classify the pictures in ``inputs`` and print (and optionally save) the predictions."""
    inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else cfg.inputs
    try:
        predictions, failures = predict(cfg.ckpt_path, inputs, cfg.invert, cfg.batch_size, cfg.accelerator)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    for path, reason in failures:
        print(f"skipped {path}: {reason}", file=sys.stderr)
    width = max(len(str(prediction.file)) for prediction in predictions)
    print(f"{'file':<{width}}  {'prediction':<12} probability  top-{TOP_K}")
    for prediction in predictions:
        row = prediction.row()
        print(f"{row['file']:<{width}}  {row['prediction']:<12} {row['probability']:>11}  {row['top3']}")
    if cfg.output:
        write_csv(predictions, Path(cfg.output))
        print(f"predictions written to {cfg.output}")


if __name__ == "__main__":
    main()
