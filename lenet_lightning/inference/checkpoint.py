"""Load a trained checkpoint for evaluation, prediction or export, with the data set it was trained on.

The user names only the checkpoint: the data set (and its folder) come from the run folder's
``.hydra/config.yaml`` when the checkpoint sits in a run folder, else from the class names stored in the
checkpoint's hyper-parameters.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.data.datamodule import DATASETS, MNISTDataModule
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.training.checkpoints import load_checkpoint_safely

TRAIN_CONFIG = CONFIG_DIR / "train.yaml"
CHECKPOINT_HINT = "pass ckpt_path=outputs/runs/<date>/<time>/checkpoints/last.ckpt (or the run folder)"


class CheckpointError(UserError):
    """The checkpoint path is missing, does not exist, or is not a checkpoint this project wrote."""


@dataclass
class LoadedCheckpoint:
    """A trained classifier (in eval mode, on the CPU) and where it came from."""

    path: Path
    module: LeNetClassifier
    run_dir: Path | None  # the Hydra run folder holding .hydra/config.yaml, when there is one
    run_config: DictConfig | None

    @property
    def class_names(self) -> list[str]:
        return list(self.module.hparams.class_names)

    @property
    def dataset_name(self) -> str:
        """``mnist`` or ``fashion``: from the run's config, else recognised from the stored class names."""
        if self.run_config is not None:
            return str(self.run_config.dataset.name)
        for name, dataset_class in DATASETS.items():
            if list(dataset_class.classes) == self.class_names:
                return name
        raise CheckpointError(f"{self.path}: its class names {self.class_names} match none of {sorted(DATASETS)}")

    def datamodule(self, data_dir: str | None = None) -> MNISTDataModule:
        """The training run's data module (same data set and test batch size), optionally on another folder."""
        if self.run_config is None:
            # Training's default folder (LENET_DATA_DIR, else data/), read from its config so the two agree.
            default_dir = OmegaConf.load(TRAIN_CONFIG).data_dir
            return MNISTDataModule(name=self.dataset_name, data_dir=data_dir or default_dir)
        config = self.run_config if data_dir is None else OmegaConf.merge(self.run_config, {"data_dir": data_dir})
        return instantiate(config.dataset)

    def output_dir(self, kind: str) -> Path:
        """Default folder for what a tool writes about this checkpoint: ``<run>/<kind>/<checkpoint name>``."""
        base = self.run_dir if self.run_dir is not None else self.path.parent
        return base / kind / self.path.stem


def resolve_path(ckpt_path: str | None) -> Path:
    """The checkpoint file named by ``ckpt_path``: a ``.ckpt`` file, or a run folder (its last.ckpt)."""
    if not ckpt_path:
        raise CheckpointError(f"no checkpoint given: {CHECKPOINT_HINT}")
    path = Path(ckpt_path).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "last.ckpt"
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; {CHECKPOINT_HINT}")
    return path


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint, loaded by the project's one safe loader (``weights_only=True``), with its hyper-parameters."""
    checkpoint = load_checkpoint_safely(path)
    if "hyper_parameters" not in checkpoint:
        raise CheckpointError(f"{path} has no model hyper-parameters; {CHECKPOINT_HINT}")
    return checkpoint


def find_run_dir(path: Path) -> Path | None:
    """The Hydra run folder a checkpoint belongs to (``<run>/checkpoints/last.ckpt``), if it has one."""
    for folder in (path.parent, path.parent.parent):
        if (folder / ".hydra" / "config.yaml").is_file():
            return folder
    return None


def load_checkpoint(ckpt_path: str | None) -> LoadedCheckpoint:
    """Load the classifier of ``ckpt_path`` in eval mode, with its run folder's config when there is one."""
    path = resolve_path(ckpt_path)
    checkpoint = read_checkpoint(path)
    # Built from the hyper-parameters directly instead of ``load_from_checkpoint``: the file is read once,
    # and each way it can be wrong gets its own message.
    try:
        module = LeNetClassifier(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError) as error:
        reason = str(error).splitlines()[0]
        raise CheckpointError(f"{path} does not hold a LeNetClassifier this project can rebuild ({reason})") from error
    module.eval()
    run_dir = find_run_dir(path)
    run_config = OmegaConf.load(run_dir / ".hydra" / "config.yaml") if run_dir is not None else None
    return LoadedCheckpoint(path=path, module=module, run_dir=run_dir, run_config=run_config)
