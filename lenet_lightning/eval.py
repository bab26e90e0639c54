"""``python -m lenet_lightning.eval ckpt_path=...``: test a trained checkpoint (see ``inference/evaluate.py``).

Torch and Lightning are imported only once a checkpoint is evaluated, so ``--help`` stays quick.
"""

if __name__ == "__main__":  # before the imports below, which a Ctrl-C would otherwise end with a traceback
    from lenet_lightning.errors import end_quietly_on_signals

    end_quietly_on_signals("eval")


import logging
import sys

import hydra
from omegaconf import DictConfig

from lenet_lightning.config.check import check_sweep_job
from lenet_lightning.config.command import exit_bad_input, run_command
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.errors import UserError
from lenet_lightning.inference.evaluate import evaluate, report_lines
from lenet_lightning.runs.commands import TOOL_PATH_KEYS, hydra_safe_arguments

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="eval")
def evaluate_checkpoint(cfg: DictConfig) -> float:
    """Evaluate one checkpoint and return its test accuracy."""
    try:
        check_sweep_job(cfg)
        result = evaluate(
            cfg.ckpt_path,
            data_dir=cfg.data_dir,
            output=cfg.output,
            accelerator=cfg.accelerator,
            pr_curves=cfg.pr_curves,
            projector_images=cfg.projector_images,
            overwrite=cfg.overwrite,
        )
    except UserError as error:
        exit_bad_input(error)
    for line in report_lines(result):
        log.info(line)
    return result["test_acc"]


def main() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work."""
    sys.argv[1:] = hydra_safe_arguments(sys.argv[1:], TOOL_PATH_KEYS)  # paths taken literally, as train does
    run_command(evaluate_checkpoint, "eval")


if __name__ == "__main__":
    main()
