"""LeNet variants, optimiser schedules, batch augmentation and the experiment recipes that bundle them."""

import re
from collections.abc import Callable

import lightning as L
import pytest
import torch
from omegaconf import OmegaConf

from lenet_lightning.data.augment import shift_and_flip
from lenet_lightning.errors import UserError
from lenet_lightning.model.lenet import LeNet
from lenet_lightning.training.run import build, fit
from tests.conftest import CONFIG_DIR, REPO_ROOT, TINY_TEST

CONF = CONFIG_DIR
README = REPO_ROOT / "README.md"
MODEL_CONFIGS = sorted(path.stem for path in (CONF / "model").glob("*.yaml"))
EXPERIMENTS = sorted(path.stem for path in (CONF / "experiment").glob("*.yaml"))


def readme_parameter_counts() -> dict[str, int]:
    """The parameter column of the README's model-config table: rows like "| `lenet_bn` | ... | 62,158 |"."""
    counts = {}
    for line in README.read_text().splitlines():
        match = re.match(r"\|\s*`(\w+)`\s*\|.*\|\s*([\d,]+)\s*\|\s*$", line)
        if match:
            counts[match[1]] = int(match[2].replace(",", ""))
    return counts


@pytest.mark.parametrize("name", MODEL_CONFIGS)
def test_model_config_trains_and_has_the_readme_parameter_count(name: str, make_config: Callable) -> None:
    cfg = make_config(f"model={name}")
    net = LeNet(**OmegaConf.to_container(cfg.model, resolve=True))
    images, labels = torch.rand(8, 1, 28, 28), torch.arange(8)
    loss = torch.nn.functional.cross_entropy(net(images), labels)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in net.parameters())
    assert sum(p.numel() for p in net.parameters()) == readme_parameter_counts()[name]


def test_default_config_is_the_classic_recipe_unchanged(make_config: Callable) -> None:
    """Same initial weights as a bare ``LeNet()``, a constant-lr SGD and untouched training batches."""
    cfg = make_config()
    L.seed_everything(cfg.seed, verbose=False)
    _, module, trainer = build(cfg)
    L.seed_everything(cfg.seed, verbose=False)
    reference = LeNet()
    assert module.net.state_dict().keys() == reference.state_dict().keys()
    for key, value in reference.state_dict().items():
        assert torch.equal(module.net.state_dict()[key], value), key
    module.trainer = trainer
    optimizer = module.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD), "no learning-rate scheduler"
    group = optimizer.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"], group["nesterov"]) == (0.9, 0.0, 0.0, False)
    images = torch.rand(4, 1, 28, 28)
    assert shift_and_flip(images, **module.hparams.augment) is images, "training batches reach the net untouched"


class LearningRateRecorder(L.Callback):
    """The learning rate in effect at every training step."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["none", "cosine", "onecycle"])
def test_scheduler_shapes_the_learning_rate_over_the_run(name: str, make_config: Callable) -> None:
    cfg = make_config(f"scheduler={name}", "epochs=2", "lr=0.2", "dataset.batch_size=32", "accelerator=cpu")
    datamodule, module, trainer = build(cfg)
    recorder = LearningRateRecorder()
    trainer.callbacks.append(recorder)
    trainer.fit(module, datamodule=datamodule)
    assert len(recorder.lrs) == 2 * 512 // 32
    assert max(recorder.lrs) == pytest.approx(0.2)
    if name == "none":
        assert set(recorder.lrs) == {0.2}
    else:
        assert recorder.lrs[-1] < 0.01, "annealed to almost zero by the last step"


def test_one_cycle_with_a_one_step_warm_up_is_refused_in_one_line(make_config: Callable) -> None:
    """Torch's OneCycleLR divides by zero when pct_start x steps is exactly 1: here 0.25 x 4 steps (2 per epoch)."""
    cfg = make_config("scheduler=onecycle", "epochs=2", "accelerator=cpu")
    with pytest.raises(UserError, match=r"exactly one of this run's 4 optimizer steps \(scheduler.pct_start=0.25\)"):
        fit(cfg)
    assert fit(make_config("scheduler=onecycle", "epochs=3", "accelerator=cpu")).status == "completed"


@pytest.mark.parametrize("max_shift,hflip", [(2, False), (2, True), (0, True)])
def test_shift_and_flip_moves_whole_images_and_keeps_shape_and_dtype(max_shift: int, hflip: bool) -> None:
    torch.manual_seed(0)
    images = torch.rand(32, 1, 28, 28)
    augmented = shift_and_flip(images, max_shift=max_shift, hflip=hflip)
    assert augmented.shape == images.shape and augmented.dtype == images.dtype
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    moves = set()
    for image, result in zip(padded, augmented, strict=True):
        candidates = {
            (dy, dx, flip): (image.flip(-1) if flip else image)[:, dy : dy + 28, dx : dx + 28]
            for dy in range(2 * max_shift + 1)
            for dx in range(2 * max_shift + 1)
            for flip in ((False, True) if hflip else (False,))
        }
        matches = [move for move, crop in candidates.items() if torch.equal(crop, result)]
        assert matches, "every output must be one shifted (and maybe mirrored) input image"
        moves.add(matches[0])
    assert len(moves) > 1, "each image draws its own shift/flip, not one per batch"


def test_shift_and_flip_off_is_the_identity_and_draws_nothing() -> None:
    images = torch.rand(4, 1, 28, 28)
    rng_before = torch.get_rng_state()
    assert shift_and_flip(images) is images
    assert torch.equal(torch.get_rng_state(), rng_before)


def record_network_inputs(net: torch.nn.Module) -> dict[bool, list[torch.Tensor]]:
    """Keep every batch the network is fed, keyed by train mode (True while training, False while evaluating)."""
    seen: dict[bool, list[torch.Tensor]] = {True: [], False: []}
    net.register_forward_pre_hook(lambda layer, args: seen[layer.training].append(args[0].detach().clone()))
    return seen


@pytest.mark.parametrize("augment", ["none", "shift_flip"])
def test_augmentation_reaches_training_batches_only(augment: str, make_config: Callable) -> None:
    cfg = make_config(f"augment={augment}", "epochs=1", "accelerator=cpu")
    datamodule, module, trainer = build(cfg)
    seen = record_network_inputs(module.net)
    trainer.fit(module, datamodule=datamodule)
    train_images, _ = datamodule.splits["train"]
    originals = {bytes(image.numpy()) for image in train_images}
    trained_on = torch.cat(seen[True])
    unchanged = sum(bytes((image[0] * 255).round().to(torch.uint8).numpy()) in originals for image in trained_on)
    if augment == "none":
        assert unchanged == len(trained_on)
    else:
        assert unchanged < len(trained_on) / 4
    test_images, _ = datamodule.splits["test"]
    evaluated, expected = torch.cat(seen[False]), test_images.unsqueeze(1).float() / 255
    passes = len(evaluated) // len(expected)
    assert passes >= 1 and torch.equal(evaluated, expected.repeat(passes, 1, 1, 1)), "every test pass sees raw images"


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_runs_one_epoch(name: str, make_config: Callable) -> None:
    # No end-of-run figures: they are tested on their own, and drawing them would double this test's time.
    cfg = make_config(f"experiment={name}", "epochs=1", "accelerator=cpu", "callbacks.error_analysis=null")
    recipe = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    for override in recipe.defaults:
        group, option = next(iter(override.items()))
        group = group.removeprefix("override /")
        expected = make_config(f"{group}={option}")[group]
        assert OmegaConf.to_container(cfg[group]) == OmegaConf.to_container(expected), group
    result = fit(cfg)
    assert result.status == "completed"
    correct = result.test_acc * TINY_TEST  # evaluated on every tiny test image once
    assert correct == pytest.approx(round(correct))
