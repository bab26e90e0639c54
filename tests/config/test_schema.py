"""The one config schema: every value users set is checked, bad ones are refused in one line naming the key.

Tests compose the real configs in process and run the schema check, then run all four commands in this process
(``run_command``); tests/cli/test_console_scripts.py checks the same contract once per command in its own process.
"""

import dataclasses
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path
from typing import get_args

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import MISSING, DictConfig, OmegaConf

from lenet_lightning.config import schema
from lenet_lightning.config.explain import explain
from lenet_lightning.errors import UserError
from tests.conftest import CONFIG_DIR, compose_config

COMMANDS = ("train", "eval", "predict", "export")
# The configs eval, predict and export need to get as far as the check of the value under test.
NEEDED = {"train": (), "eval": (), "predict": ("inputs=a.png",), "export": ()}

NEEDS_OPTUNA = pytest.mark.skipif(find_spec("optuna") is None, reason="needs the optuna extra")


def command_config(command: str, *overrides: str) -> DictConfig:
    return compose_config(command, *NEEDED[command], *overrides)


def refusal(command: str, *overrides: str) -> str:
    """The one line a command prints for ``overrides``, from composition or from the schema check."""
    try:
        cfg = command_config(command, *overrides)
    except Exception as error:
        return explain(error, command)
    with pytest.raises(UserError) as raised:
        schema.check_config(cfg)
    return str(raised.value)


# (command, overrides, what the line must say); each is refused by the schema.
BAD_VALUES = [
    ("train", ("model.activation=swish",), ("model.activation=swish", "sigmoid, relu, gelu, tanh")),
    ("train", ("model.activation=rleu",), ("did you mean model.activation=relu",)),
    ("train", ("model.pooling=mean",), ("model.pooling=mean", "avg, max")),
    ("train", ("compile=bogus",), ("compile=bogus", "null, default, reduce-overhead, max-autotune")),
    ("train", ("trainer.precision=bogus",), ("trainer.precision=bogus", "16-mixed", "bf16-mixed", "32-true")),
    ("train", ("dataset.name=cifar",), ("dataset.name=cifar", "mnist, fashion")),
    ("train", ("lr=1e308",), ("lr=1e+308", "lr must be a number > 0 and <= 3.4e+38")),
    ("train", ("lr=nan",), ("lr=nan", "lr must be")),
    ("train", ("lr=inf",), ("lr=inf", "lr must be")),
    ("train", ("lr=-inf",), ("lr=-inf", "lr must be")),
    ("train", ("lr=0",), ("lr=0 ", "lr must be a number > 0")),
    ("train", ("lr=abc",), ("lr=abc", "lr must be a number > 0")),
    ("train", ("lr=null",), ("lr=null", "lr must be a number > 0")),
    ("train", ("optimizer.lr=nan",), ("optimizer.lr=nan",)),
    ("train", ("optimizer.momentum=1",), ("optimizer.momentum=1", "a number >= 0 and < 1")),
    ("train", (f"seed={2**70}",), (f"seed={2**70}", "an integer >= 0 and <= 4294967295")),
    ("train", ("seed=-1",), ("seed=-1", "an integer >= 0")),
    ("train", ("dataset.seed=-1",), ("dataset.seed=-1",)),
    ("train", ("~lr",), ("lr is required", "~lr")),
    ("train", ("~dataset.batch_size",), ("dataset.batch_size is required",)),
    ("train", ("augment.max_shift=-1",), ("augment.max_shift=-1", "an integer >= 0")),
    ("train", ("augment.max_shift=1.5",), ("augment.max_shift=1.5", "an integer >= 0")),
    ("train", ("scheduler=onecycle", "scheduler.max_lr=0"), ("scheduler.max_lr=0", "a number > 0")),
    ("train", ("scheduler=onecycle", "scheduler.pct_start=nan"), ("scheduler.pct_start=nan",)),
    ("train", ("scheduler=cosine", "scheduler.eta_min=-1"), ("scheduler.eta_min=-1",)),
    ("train", ("scheduler.name=linear",), ("scheduler.name=linear", "none, cosine, onecycle")),
    ("train", ("trainer.max_epochs=-1",), ("trainer.max_epochs=-1", "an integer >= 1")),
    ("train", ("trainer.max_epochs=abc",), ("trainer.max_epochs=abc", "an integer >= 1")),
    ("train", ("trainer.devices=0",), ("trainer.devices=0", "auto")),
    ("train", ("trainer=ddp_multinode", "trainer.num_nodes=0"), ("trainer.num_nodes=0",)),
    ("train", ("trainer.accelerator=tpu",), ("trainer.accelerator=tpu", "auto, cpu, gpu, cuda, mps")),
    ("train", ("epochs=0",), ("epochs=0", "an integer >= 1")),
    ("train", ("epochs=2.5",), ("epochs=2.5", "an integer >= 1")),
    ("train", ("model.dropout=nan",), ("model.dropout=nan", "a number >= 0 and < 1")),
    ("train", ("model.dropout=1",), ("model.dropout=1", "a number >= 0 and < 1")),
    ("train", ("dataset.batch_size=0",), ("dataset.batch_size=0", "an integer >= 1")),
    ("train", ("dataset.val_size=60000",), ("dataset.val_size=60000", "< 60000")),
    ("train", ("memory_format=nhwc",), ("memory_format=nhwc", "contiguous, channels_last")),
    ("train", ("accelerator=tpu",), ("accelerator=tpu", "auto, cpu, gpu, cuda, mps")),
    ("train", ("fast_cpu_layers=maybe",), ("fast_cpu_layers=maybe", "true or false")),
    ("train", ("callbacks.divergence.check_every_n_steps=0",), ("check_every_n_steps=0", "an integer >= 1")),
    ("train", ("callbacks.error_analysis.projector_images=-5",), ("projector_images=-5", "an integer >= 0")),
    ("train", ("callbacks.error_analysis.projector_images=abc",), ("projector_images=abc", "an integer >= 0")),
    ("train", ("callbacks.error_analysis.projector_images=2.5",), ("projector_images=2.5", "an integer >= 0")),
    ("train", ("callbacks.error_analysis.pr_curves=maybe",), ("pr_curves=maybe", "true or false")),
    ("eval", ("accelerator=cpux",), ("accelerator=cpux", "did you mean accelerator=cpu")),
    ("eval", ("projector_images=-5",), ("projector_images=-5", "an integer >= 0")),
    ("eval", ("projector_images=abc",), ("projector_images=abc", "projector_images")),
    ("eval", ("pr_curves=maybe",), ("pr_curves=maybe", "pr_curves")),
    ("predict", ("batch_size=0",), ("batch_size=0", "an integer >= 1")),
    ("predict", ("invert=maybe",), ("invert=maybe", "auto, true, false")),
    ("predict", ("invert=1",), ("invert=1", "auto, true, false")),
    ("predict", ("inputs=null",), ("inputs=null", "inputs=picture.png")),
    ("export", ("format=tflite",), ("format=tflite is not one of onnx, torchscript",)),
    ("export", ("tolerance=nan",), ("tolerance=nan", "a finite number > 0")),
    ("export", ("tolerance=inf",), ("tolerance=inf", "a finite number > 0")),
    ("export", ("tolerance=0",), ("tolerance=0", "a finite number > 0")),
]
TYPOS = [
    ("train", "lrr=0.1", "did you mean 'lr'"),
    ("train", "trainer.max_epoch=3", "did you mean 'trainer.max_epochs'"),
    ("eval", "ckpt_pth=x.ckpt", "did you mean 'ckpt_path'"),
    ("predict", "invrt=true", "did you mean 'invert'"),
    ("export", "formt=onnx", "did you mean 'format'"),
]


def case_id(case: tuple) -> str:
    command, overrides, *_ = getattr(case, "values", case)  # a pytest.param's values
    return f"{command}:{' '.join(overrides)}"


@pytest.mark.parametrize(("command", "overrides", "fragments"), BAD_VALUES, ids=[case_id(c) for c in BAD_VALUES])
def test_bad_value_is_refused_in_one_line_naming_the_key(command: str, overrides: tuple, fragments: tuple) -> None:
    message = refusal(command, *overrides)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(("command", "override", "hint"), TYPOS)
def test_typo_gets_did_you_mean(command: str, override: str, hint: str) -> None:
    message = refusal(command, override)
    assert hint in message and "\n" not in message
    assert f"python -m lenet_lightning.{command} --cfg job" in message


def test_sweep_without_multirun_says_add_m() -> None:
    """Hydra refuses a list of values while it reads the command line, before it composes anything."""
    with pytest.raises(Exception) as raised, initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        compose(config_name="train", overrides=["lr=0.1,0.3"])
    message = explain(raised.value, "train")
    assert message.startswith("lr=0.1,0.3 lists several values: add -m")


@pytest.mark.parametrize(
    "overrides",
    [
        (),
        ("experiment=best_mnist",),
        ("experiment=best_fashion",),
        ("experiment=classic_fashion",),
        ("scheduler=onecycle",),
        ("scheduler=cosine",),
        ("augment=shift_flip",),
        ("trainer=ddp_cpu",),
        ("trainer=ddp_multinode",),
        pytest.param(("hparams_search=lr_optuna",), marks=NEEDS_OPTUNA),
        pytest.param(("hparams_search=recipe_optuna",), marks=NEEDS_OPTUNA),
        ("model=lenet_bn", "compile=max-autotune", "memory_format=channels_last", "trainer.precision=16"),
        ("trainer.devices=[0,1]", "seed=4294967295", "lr=3.4e38", "+trainer.gradient_clip_val=0.5"),
    ],
)
def test_every_shipped_recipe_passes_the_check(overrides: tuple) -> None:
    schema.check_config(command_config("train", *overrides))


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_is_typed_by_its_schema(command: str) -> None:
    cfg = command_config(command)
    assert OmegaConf.get_type(cfg) is schema.SCHEMAS[command]
    schema.check_config(cfg)


def test_the_schema_holds_no_defaults() -> None:
    """Every value comes from conf/: a default in the schema would be a second place to change it."""

    def walk(dataclass: type) -> list[str]:
        found = []
        for spec in dataclasses.fields(dataclass):
            if spec.default is not MISSING or spec.default_factory is not dataclasses.MISSING:
                found.append(f"{dataclass.__name__}.{spec.name}")
            for nested in (spec.type, spec.metadata.get(schema.KEYS)):
                if dataclasses.is_dataclass(nested):
                    found += walk(nested)
        return found

    assert [name for command in schema.SCHEMAS.values() for name in walk(command)] == []


def test_declared_choices_are_what_the_code_accepts() -> None:
    """The schema lists choices so the check needs no torch; here they are held against the code that uses them."""
    from lightning.fabric.connector import _PRECISION_INPUT

    from lenet_lightning.data.datamodule import DATASETS
    from lenet_lightning.inference.export import FORMATS
    from lenet_lightning.model.classifier import SCHEDULERS
    from lenet_lightning.model.lenet import ACTIVATIONS, POOLINGS

    lightning_precisions = {str(value) for literal in get_args(_PRECISION_INPUT) for value in get_args(literal)}
    assert set(schema.PRECISIONS) == lightning_precisions
    assert set(schema.DATASETS) == set(DATASETS)
    assert set(schema.EXPORT_FORMATS) == set(FORMATS)
    assert set(schema.SCHEDULERS) == {"none", *SCHEDULERS}
    assert set(schema.ACTIVATIONS) == set(ACTIVATIONS)
    assert set(schema.POOLINGS) == set(POOLINGS)


def test_compile_modes_are_torch_compile_modes() -> None:
    """Each mode offered is one torch.compile knows (newer torch releases may add more)."""
    torch_inductor = pytest.importorskip("torch._inductor")
    assert set(schema.COMPILE_MODES) <= set(torch_inductor.list_mode_options())


@pytest.mark.slow
def test_checks_run_without_importing_torch() -> None:
    """Bad input is answered before torch is imported (a second or more of start-up)."""
    code = (
        "import sys; from lenet_lightning.config.schema import check_config; "
        "from hydra import compose, initialize_config_dir; "
        f"initialize_config_dir(config_dir={str(CONFIG_DIR)!r}, version_base='1.3'); "
        "check_config(compose('train', overrides=['lr=0.5', 'accelerator=cpu'])); "
        "print('torch' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False", done.stderr


# The command line: each way a value is refused (the schema's check, a missing key, a number too large for its
# type, a key of a chosen group) is one line on stderr and exit 2, through all four commands. What each key's line
# says is checked above, without the command around it.
SLOW = pytest.mark.slow  # the edit loop runs each command once; each line's words are checked above, fast
CLI_CASES = [
    ("train", ("model.activation=swish",), "model.activation"),
    pytest.param("train", ("lr=nan",), "lr", marks=SLOW),
    pytest.param("train", (f"seed={2**70}",), "seed", marks=SLOW),
    pytest.param("train", ("~lr",), "lr", marks=SLOW),
    pytest.param("train", ("scheduler=onecycle", "scheduler.max_lr=0"), "scheduler.max_lr", marks=SLOW),
    ("eval", ("accelerator=tpu",), "accelerator"),
    pytest.param("eval", ("projector_images=abc",), "projector_images", marks=SLOW),
    ("predict", ("inputs=a.png", "batch_size=0"), "batch_size"),
    pytest.param("predict", ("inputs=a.png", "invert=maybe"), "invert", marks=SLOW),
    ("export", ("format=tflite",), "format"),
    pytest.param("export", ("tolerance=nan",), "tolerance", marks=SLOW),
]


def assert_one_line_exit_2(done: subprocess.CompletedProcess, *fragments: str) -> str:
    assert done.returncode == 2, done.stderr[-3000:]
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(("command", "args", "key"), CLI_CASES, ids=[case_id(c) for c in CLI_CASES])
def test_command_line_refuses_bad_value_in_one_line(run_command, tmp_path: Path, command: str, args: tuple, key: str):
    done = run_command(*args, module=f"lenet_lightning.{command}")
    assert_one_line_exit_2(done, f"error: {key}")
    assert not (tmp_path / "outputs").exists(), "bad input leaves no run folder"


@pytest.mark.parametrize(
    ("command", "override", "hint"), [typo if typo[0] == "train" else pytest.param(*typo, marks=SLOW) for typo in TYPOS]
)
def test_command_line_typo_gets_did_you_mean(run_command, command: str, override: str, hint: str) -> None:
    assert_one_line_exit_2(run_command(override, module=f"lenet_lightning.{command}"), hint)


@pytest.mark.slow
def test_multirun_from_the_config_leaves_no_empty_run_folder(run_command, tmp_path: Path) -> None:
    """``hydra.mode=MULTIRUN`` (as ``hparams_search=lr_optuna`` sets it) is a sweep: no single-run folder."""
    done = run_command("hydra.mode=MULTIRUN", "epochs=1", "accelerator=cpu", "~callbacks.error_analysis")
    assert done.returncode == 0, done.stderr[-3000:]
    assert not (tmp_path / "outputs" / "runs").exists()
    (job,) = (tmp_path / "outputs" / "multirun").glob("*/*/*/result.json")
    assert '"status": "completed"' in job.read_text()
