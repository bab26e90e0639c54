"""The default recipe on the real data sets (LENET_DATA_DIR; CI points it at ../shared/datasets)."""

from pathlib import Path

import pytest

from lenet_lightning.training.run import fit
from tests.conftest import REAL_DATA_DIR

pytestmark = pytest.mark.real_data


def test_recipe_on_mnist_reaches_95_percent_test_accuracy(make_config) -> None:
    result = fit(make_config("accelerator=cpu", "callbacks.progress_bar.refresh_rate=0", data_dir=Path(REAL_DATA_DIR)))
    assert result.test_acc >= 0.95, result
    assert result.train_loss < 0.2, result


def test_recipe_on_fashion_reaches_80_percent_train_accuracy(make_config) -> None:
    cfg = make_config(
        "dataset=fashion", "accelerator=cpu", "callbacks.progress_bar.refresh_rate=0", data_dir=Path(REAL_DATA_DIR)
    )
    result = fit(cfg)
    assert result.train_acc >= 0.80, result
