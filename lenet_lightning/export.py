"""``python -m lenet_lightning.export ckpt_path=... format=onnx|torchscript``: export and check a checkpoint.

Torch is imported only once a checkpoint is exported, so ``--help`` stays quick. Exit status: 0 exported
and checked, 1 the exported model's logits differ from PyTorch's (or are NaN; the file is not kept), 2 bad
input (one line on stderr, nothing written), such as an output that is a file the export reads.
"""

if __name__ == "__main__":  # before the imports below, which a Ctrl-C would otherwise end with a traceback
    from lenet_lightning.errors import end_quietly_on_signals

    end_quietly_on_signals("export")


import logging
import sys

import hydra
from omegaconf import DictConfig

from lenet_lightning.config.check import check_sweep_job
from lenet_lightning.config.command import exit_bad_input, run_command
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.errors import EXIT_SOME_SKIPPED, UserError
from lenet_lightning.inference.export import ExportCheckError, export
from lenet_lightning.runs.commands import TOOL_PATH_KEYS, hydra_safe_arguments

log = logging.getLogger(__name__)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="export")
def export_checkpoint(cfg: DictConfig) -> None:
    """Export one checkpoint and print the check of the exported model against PyTorch."""
    try:
        check_sweep_job(cfg)
        result = export(cfg.ckpt_path, cfg.format, cfg.output, cfg.data_dir, cfg.tolerance, cfg.overwrite)
    except UserError as error:
        exit_bad_input(error)
    except ExportCheckError as error:
        log.error("export check failed: %s", error)
        sys.exit(EXIT_SOME_SKIPPED)
    for line in result.summary_lines():
        log.info(line)


def main() -> None:
    """Run from the command line: bad input is reported in one line with exit status 2, before any work."""
    sys.argv[1:] = hydra_safe_arguments(sys.argv[1:], TOOL_PATH_KEYS)  # paths taken literally, as train does
    run_command(export_checkpoint, "export")


if __name__ == "__main__":
    main()
