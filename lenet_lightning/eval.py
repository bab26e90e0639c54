"""``python -m lenet_lightning.eval ckpt_path=...``: test a trained checkpoint (see ``inference/evaluate.py``).

Torch and Lightning are imported only once a checkpoint is evaluated, so ``--help`` stays quick.
"""

import json
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig

from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.inference.evaluate import evaluate, report_lines


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def main(cfg: DictConfig) -> float:
    """Evaluate one checkpoint and return its test accuracy."""
    try:
        result = evaluate(cfg.ckpt_path, data_dir=cfg.data_dir, output=cfg.output, accelerator=cfg.accelerator)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    (Path(result["output_dir"]) / "eval.json").write_text(json.dumps(result, indent=2) + "\n")
    print("\n".join(report_lines(result)))
    return result["test_acc"]


if __name__ == "__main__":
    main()
