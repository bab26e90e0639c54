"""The real Hydra configs compose and instantiate for every option, and the README's CLI lines mean what they say."""

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from lenet_lightning.data.datamodule import MNISTDataModule
from lenet_lightning.training.run import build
from tests.conftest import CONFIG_DIR, compose_config


def options(group: str) -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize(
    "group", ["dataset", "model", "optimizer", "scheduler", "augment", "trainer", "callbacks", "logger"]
)
def test_every_option_of_every_group_composes_and_builds(make_config, group: str) -> None:
    for option in options(group):
        cfg = make_config(f"{group}={option}", "accelerator=cpu")
        datamodule, _, trainer = build(cfg)
        assert isinstance(datamodule, MNISTDataModule)
        assert trainer.max_epochs == cfg.epochs


# Group choices, values, additions, deletions and an experiment's global values, each after the others.
OVERRIDE_MIXES = [
    ("dataset=fashion", "lr=0.5", "epochs=20", "accelerator=cpu", "seed=3"),
    ("experiment=best_mnist", "epochs=2", "scheduler.max_lr=0.5"),
    ("scheduler=onecycle", "trainer=ddp_cpu", "+trainer.gradient_clip_val=0.5", "~callbacks.error_analysis"),
]
REFUSED_MIXES = [
    ("lr=abc",),
    ("lrr=0.1",),
    ("~lr", "lr=0.1"),
    ("~nothing",),
]


@pytest.mark.parametrize("overrides", OVERRIDE_MIXES)
def test_tests_compose_as_hydra_does(overrides: tuple[str, ...]) -> None:
    """compose_config (files read once, the command line applied on a copy) is Hydra's compose() in one call."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        expected = compose(config_name="train", overrides=list(overrides))
    cfg = compose_config("train", *overrides)
    assert OmegaConf.to_yaml(cfg) == OmegaConf.to_yaml(expected)
    assert OmegaConf.get_type(cfg) is OmegaConf.get_type(expected)
    assert OmegaConf.is_struct(cfg) and OmegaConf.is_struct(expected)


@pytest.mark.parametrize("overrides", REFUSED_MIXES)
def test_tests_see_the_errors_hydra_raises(overrides: tuple[str, ...]) -> None:
    with (
        pytest.raises(ConfigCompositionException) as expected,
        initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"),
    ):
        compose(config_name="train", overrides=list(overrides))
    with pytest.raises(ConfigCompositionException) as raised:
        compose_config("train", *overrides)
    assert str(raised.value) == str(expected.value)
    assert repr(raised.value.__cause__) == repr(expected.value.__cause__)


def test_defaults_are_the_recipe(make_config) -> None:
    cfg = make_config()
    assert (cfg.lr, cfg.epochs, cfg.accelerator, cfg.seed) == (0.9, 10, "auto", 0)
    assert (cfg.compile, cfg.memory_format, cfg.fast_cpu_layers) == (None, "contiguous", True)
    assert cfg.dataset.name == "mnist" and cfg.dataset.batch_size == 256 and cfg.dataset.val_size == 0
    assert dict(cfg.model) == {"activation": "sigmoid", "pooling": "avg", "batch_norm": False, "dropout": 0.0}
    assert cfg.optimizer.lr == 0.9 and cfg.optimizer.momentum == 0.0 and cfg.optimizer.weight_decay == 0.0
    assert cfg.trainer.max_epochs == 10 and cfg.trainer.accelerator == "auto"


def test_fashion_changes_only_the_data_set(make_config) -> None:
    mnist, fashion = make_config(), make_config("dataset=fashion")
    assert fashion.dataset.name == "fashion"
    assert {**fashion.dataset, "name": "mnist"} == {**mnist.dataset}


def test_short_keys_feed_the_nested_configs(make_config) -> None:
    cfg = make_config("dataset=fashion", "lr=0.5", "epochs=20", "accelerator=cpu", "seed=3")
    assert cfg.optimizer.lr == 0.5
    assert cfg.trainer.max_epochs == 20 and cfg.trainer.accelerator == "cpu"
    assert cfg.dataset.seed == 3
    datamodule, module, trainer = build(cfg)
    assert datamodule.name == "fashion" and datamodule.seed == 3
    assert module.hparams.optimizer["lr"] == 0.5
    assert trainer.max_epochs == 20


def test_nested_keys_stay_available(make_config) -> None:
    cfg = make_config("trainer.max_epochs=3", "dataset.batch_size=128")
    datamodule, _, trainer = build(cfg)
    assert trainer.max_epochs == 3 and datamodule.batch_size == 128


def test_data_dir_comes_from_lenet_data_dir_else_data(monkeypatch, tmp_path: Path) -> None:
    for env, expected in ((str(tmp_path), str(tmp_path)), (None, "data")):
        if env is None:
            monkeypatch.delenv("LENET_DATA_DIR", raising=False)
        else:
            monkeypatch.setenv("LENET_DATA_DIR", env)
        assert compose_config("train").dataset.data_dir == expected  # read from the shell when the value is used


def test_outputs_go_under_the_run_folder(make_config, tmp_path: Path) -> None:
    cfg = make_config()
    logger = instantiate(cfg.logger)
    assert Path(logger.log_dir) == tmp_path / "run"
    assert cfg.callbacks.model_checkpoint.dirpath == str(tmp_path / "run" / "checkpoints")
    assert cfg.trainer.default_root_dir == str(tmp_path / "run")


def test_values_come_from_the_yaml_files_typed_by_the_schema(make_config) -> None:
    """conf/ holds every value; the schema only types them, so the composed values have the schema's types."""
    cfg = make_config("lr=1", "model.dropout=0")
    assert isinstance(cfg.lr, float) and isinstance(cfg.model.dropout, float)
    assert isinstance(cfg.optimizer.lr, float) and cfg.optimizer.lr == 1.0  # ${lr}, converted on access


def test_library_groups_stay_open_to_new_keyword_arguments(make_config) -> None:
    cfg = make_config("+trainer.gradient_clip_val=0.5", "~callbacks.error_analysis", "+logger.flush_secs=5")
    _, _, trainer = build(cfg)
    assert trainer.gradient_clip_val == 0.5
    assert "error_analysis" not in cfg.callbacks
