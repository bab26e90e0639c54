"""Load a trained checkpoint for evaluation, prediction or export, with the data set it was trained on.

The user names only the checkpoint: the data set (and its folder) come from the run folder's
``.hydra/config.yaml`` when the checkpoint sits in a run folder, else from the class names stored in the
checkpoint's hyper-parameters. A checkpoint whose weights are not all finite (bit rot, a diverged run saved
by hand) and a run config that is not a readable config are refused here, so they never reach a result.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.config.schema import DatasetConfig
from lenet_lightning.data.datamodule import DATASETS, MNISTDataModule
from lenet_lightning.errors import UserError
from lenet_lightning.inference.outputs import FilesRead
from lenet_lightning.model.classifier import LeNetClassifier
from lenet_lightning.runs.checkpoint_files import load_checkpoint_safely
from lenet_lightning.runs.layout import CHECKPOINT_DIR, RUN_CONFIG

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
        try:
            config = self.run_config if data_dir is None else OmegaConf.merge(self.run_config, {"data_dir": data_dir})
            return instantiate(config.dataset)
        except (InstantiationException, OmegaConfBaseException) as error:
            raise damaged_run_config(self.path, self.run_dir, error) from None

    def files_read(self, datamodule: MNISTDataModule | None = None) -> FilesRead:
        """What a command using this checkpoint reads, so that no output is ever written over one of them."""
        files = [("the checkpoint", self.path)]
        if self.run_dir is not None:
            files.append(("the run config", self.run_dir / RUN_CONFIG))
        if datamodule is not None:
            files += [("the data file", path) for path in datamodule.expected_files()]
        return files

    def data_folders(self, datamodule: MNISTDataModule | None = None) -> list[Path]:
        """The data sets' folders under the data folder a command reads (or the run trained on): never written.

        Each data set's own folder (``<data_dir>/MNIST``...), not ``data_dir`` itself, which may be a folder such
        as the working directory that holds runs and outputs too.
        """
        data_dir = (datamodule or self.datamodule()).data_dir
        return [data_dir / dataset_class.__name__ for dataset_class in DATASETS.values()]

    def output_dir(self, kind: str) -> Path:
        """Default folder for what a tool writes about this checkpoint: ``<run>/<kind>/<checkpoint name>``.

        Never inside a ``checkpoints/`` folder, even one whose run lost its config: that is the run's record.
        """
        base = self.run_dir if self.run_dir is not None else self.path.parent
        if base.name == CHECKPOINT_DIR:
            base = base.parent
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
        if (folder / RUN_CONFIG).is_file():
            return folder
    return None


def damaged_run_config(path: Path, run_dir: Path, error: Exception | str) -> CheckpointError:
    """One line naming the damaged run config and the two ways on: repair it, or do without it."""
    reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"run config {run_dir / RUN_CONFIG} is damaged ({reason}); restore it from a copy, or copy {path} out "
        "of its run folder to use it without one (the data set is then told by the checkpoint's class names)"
    )


def read_run_config(path: Path, run_dir: Path) -> DictConfig:
    """The run's composed config, refused unless its ``dataset`` section is whole (truncated files, garbage).

    The tools use that section only; it must resolve and give every key of the schema's ``DatasetConfig``.
    """
    try:
        config = OmegaConf.load(run_dir / RUN_CONFIG)
        section = config.dataset
        if not isinstance(section, DictConfig):
            raise damaged_run_config(path, run_dir, f"dataset is {section!r}, not a section of keys")
        dataset = OmegaConf.merge(OmegaConf.structured(DatasetConfig), OmegaConf.to_container(section, resolve=True))
    except (yaml.YAMLError, UnicodeDecodeError, OmegaConfBaseException) as error:
        raise damaged_run_config(path, run_dir, error) from None
    missing = OmegaConf.missing_keys(dataset)
    if missing:
        raise damaged_run_config(path, run_dir, f"dataset has no {', '.join(sorted(missing))}")
    if dataset.name not in DATASETS:
        raise damaged_run_config(path, run_dir, f"dataset.name is {dataset.name!r}, not one of {', '.join(DATASETS)}")
    return config


def refuse_non_finite(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    """Weights that are NaN or infinite give NaN results that look like numbers: refuse them instead."""
    bad = [name for name, tensor in state_dict.items() if tensor.is_floating_point() and not tensor.isfinite().all()]
    if bad:
        raise CheckpointError(
            f"checkpoint {path} has NaN or infinite weights (in {', '.join(bad)}): the file is damaged or its run "
            "diverged; use another checkpoint or train again"
        )


def load_checkpoint(ckpt_path: str | None) -> LoadedCheckpoint:
    """Load the classifier of ``ckpt_path`` in eval mode, with its run folder's config when there is one."""
    path = resolve_path(ckpt_path)
    checkpoint = read_checkpoint(path)
    # Built from the hyper-parameters directly instead of ``load_from_checkpoint``: the file is read once,
    # and each way it can be wrong gets its own message.
    try:
        module = LeNetClassifier(**checkpoint["hyper_parameters"])
        module.load_state_dict(checkpoint["state_dict"])
    except (TypeError, ValueError, RuntimeError, KeyError) as error:  # KeyError: an activation or layer it lacks
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise CheckpointError(f"{path} does not hold a LeNetClassifier this project can rebuild ({reason})") from error
    refuse_non_finite(path, module.state_dict())
    module.eval()
    run_dir = find_run_dir(path)
    run_config = read_run_config(path, run_dir) if run_dir is not None else None
    loaded = LoadedCheckpoint(path=path, module=module, run_dir=run_dir, run_config=run_config)
    refuse_other_folder_data(loaded)
    return loaded


def refuse_other_folder_data(loaded: LoadedCheckpoint) -> None:
    """The checkpoint's own class names are the truth: a run config of another data set beside it is refused.

    A Fashion-MNIST checkpoint copied into an MNIST run folder would otherwise be evaluated on MNIST.
    """
    if loaded.run_config is None:
        return
    folder_dataset = str(loaded.run_config.dataset.name)
    if list(DATASETS[folder_dataset].classes) != loaded.class_names:
        trained_on = next(
            (name for name, data in DATASETS.items() if list(data.classes) == loaded.class_names), "another data set"
        )
        raise CheckpointError(
            f"checkpoint {loaded.path} was trained on {trained_on}, but its run folder {loaded.run_dir} is a run of "
            f"{folder_dataset} ({RUN_CONFIG}); copy the checkpoint out of that folder to use it on its own data"
        )
