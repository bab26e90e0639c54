"""``python -m lenet_lightning.predict ckpt_path=... inputs=...``: classify your own pictures.

Torch and Lightning are imported only once there is something to classify, so ``--help`` stays quick. Exit
status: 0 every picture classified, 1 some skipped (unreadable or too large; the others are still classified
and written), 2 bad input (one line on stderr), nothing read or written.
"""

if __name__ == "__main__":  # before the imports below, which a Ctrl-C would otherwise end with a traceback
    from lenet_lightning.errors import end_quietly_on_signals

    end_quietly_on_signals("predict")


import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, ListConfig

from lenet_lightning.config.check import check_sweep_job
from lenet_lightning.config.command import exit_bad_input, run_command
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.errors import EXIT_SOME_SKIPPED, UserError
from lenet_lightning.inference.predict import TOP_K, predict, write_csv
from lenet_lightning.runs.commands import TOOL_PATH_KEYS, hydra_safe_arguments

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="predict")
def classify(cfg: DictConfig) -> None:
    """Classify the pictures in ``inputs`` and print (and optionally save) the predictions."""
    inputs = list(cfg.inputs) if isinstance(cfg.inputs, ListConfig) else cfg.inputs
    try:
        check_sweep_job(cfg)
        predictions, failures = predict(
            cfg.ckpt_path, inputs, cfg.invert, cfg.batch_size, cfg.accelerator, cfg.output, cfg.overwrite
        )
    except UserError as error:
        exit_bad_input(error)
    for path, reason in failures:
        log.warning("skipped %s: %s", path, reason)
    width = max(len(str(prediction.file)) for prediction in predictions)
    rows = [f"{'file':<{width}}  {'prediction':<12} probability  top-{TOP_K}"]
    for prediction in predictions:
        row = prediction.row()
        rows.append(f"{row['file']:<{width}}  {row['prediction']:<12} {row['probability']:>11}  {row['top3']}")
    log.info("\n".join(rows))
    if cfg.output:
        try:
            write_csv(predictions, Path(cfg.output))
        except UserError as error:  # the disk filled since the output was checked
            exit_bad_input(error)
        log.info("predictions written to %s", cfg.output)
    if failures:
        log.error("%d of %d files skipped (listed above)", len(failures), len(failures) + len(predictions))
        sys.exit(EXIT_SOME_SKIPPED)


def main() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work."""
    sys.argv[1:] = hydra_safe_arguments(sys.argv[1:], TOOL_PATH_KEYS)  # paths taken literally, as train does
    run_command(classify, "predict")


if __name__ == "__main__":
    main()
