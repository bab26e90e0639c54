"""Resolve once, in the run, the values of its config that depend on the shell it was started from.

``data_dir`` defaults to ``${oc.env:LENET_DATA_DIR,data}``, a relative path read from the environment, and
Hydra saves ``.hydra/config.yaml`` unresolved. eval and export, started later from another shell or folder,
would then read whatever data that shell points to, or download it. :class:`SaveResolvedDataDir` rewrites the
saved config with the absolute folder the run actually reads.

Hydra writes ``.hydra/config.yaml`` after every hook that could change the config of a sweep job, so the
file is rewritten in ``on_job_start``, the first hook after it, which every launcher calls in the job's own
process (its environment and working directory, after ``hydra.job.chdir`` when that is set).
"""

import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

SAVED_CONFIG = "config.yaml"
DATA_DIR_REFERENCE = "${data_dir}"  # how conf/dataset/*.yaml take the top-level data_dir


class SaveResolvedDataDir(Callback):
    """Hydra callback: ``data_dir`` (and ``dataset.data_dir`` when set on its own) saved as absolute paths."""

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        output_subdir = config.hydra.output_subdir
        if output_subdir is None:  # no saved config (Lightning's extra ddp processes run with none)
            return
        path = Path(config.hydra.runtime.output_dir) / output_subdir / SAVED_CONFIG
        try:
            data_dir = config.data_dir
            dataset_data_dir = OmegaConf.select(config, "dataset.data_dir")
        except OmegaConfBaseException:
            return  # an unresolvable value: the run itself reports it
        if data_dir is None or not path.is_file():
            return
        saved = OmegaConf.load(path)
        saved.data_dir = os.path.abspath(data_dir)
        dataset = saved.get("dataset")
        raw_dataset_dir = OmegaConf.to_container(dataset).get("data_dir") if isinstance(dataset, DictConfig) else None
        if raw_dataset_dir not in (None, DATA_DIR_REFERENCE):
            dataset.data_dir = os.path.abspath(dataset_data_dir)
        temporary = path.with_name(f".{SAVED_CONFIG}.tmp")
        temporary.write_text(OmegaConf.to_yaml(saved))
        temporary.replace(path)
