"""Command-line entry point: ``python -m lenet_lightning.train [key=value ...]`` (Hydra overrides).

Only Hydra is imported at module level: ``--help`` and bad overrides are answered without paying
for importing torch and Lightning.
"""

import sys

import hydra
from omegaconf import DictConfig

from lenet_lightning.errors import UserError


@hydra.main(version_base="1.3", config_path="../conf", config_name="train")
def main(cfg: DictConfig) -> float:
    """Train once and return the final test accuracy, the value Hydra sweepers optimise."""
    from lightning.pytorch.utilities import rank_zero_only

    from lenet_lightning.pipeline import fit

    try:
        result = fit(cfg)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if rank_zero_only.rank == 0:  # with the ddp strategy every process runs this function; one reports
        result.write_json(result.output_dir / "result.json")
        print("\n".join(result.summary_lines()))
    return result.test_acc


if __name__ == "__main__":
    main()
