"""The one schema of every key users set: its type, choices and range, for all four commands.

Each command's config is a dataclass registered in Hydra's ConfigStore and named first in the defaults list
of its YAML file (``conf/train.yaml``: ``- train_schema``), so OmegaConf checks types while Hydra composes:
``lr=abc`` or ``epochs=2.5`` never reach the code. Every value is ``MISSING`` here: the defaults live in
``conf/`` only. Choices and ranges are declared next to each field (field metadata made by :func:`rule`) and tested by
:func:`check_config` once the config is composed. Groups that pass keyword arguments straight to a library
(``trainer``, ``scheduler``, ``callbacks``, ``logger``) stay open dicts; the keys users set there are
declared in ``*Keys`` dataclasses and checked whenever they are present.
"""

import difflib
import math
import zipfile
from collections.abc import Callable
from dataclasses import Field, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, get_args, get_origin

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from lenet_lightning.errors import UserError

FLOAT32_MAX = 3.4028234663852886e38  # parameters are float32: a larger lr or weight decay overflows in the update
SEED_MAX = 2**32 - 1  # the largest seed Lightning's seed_everything (numpy) accepts
TRAIN_EXAMPLES = 60_000  # MNIST and Fashion-MNIST alike

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")  # torch.compile modes
MEMORY_FORMATS = ("contiguous", "channels_last")
DATASETS = ("mnist", "fashion")
ACTIVATIONS = ("sigmoid", "relu", "gelu", "tanh")
POOLINGS = ("avg", "max")
SCHEDULERS = ("none", "cosine", "onecycle")
ANNEAL_STRATEGIES = ("cos", "linear")
EXPORT_FORMATS = ("onnx", "torchscript")
INVERT = ("auto", True, False)
# Lightning's accepted Trainer(precision=...) values (lightning.fabric.connector._PRECISION_INPUT), as strings:
# the integers 64, 32 and 16 are accepted as their string forms. Listed here so the check needs no torch import.
PRECISIONS = (
    "transformer-engine",
    "transformer-engine-float16",
    "16-true",
    "16-mixed",
    "bf16-true",
    "bf16-mixed",
    "32-true",
    "64-true",
    "64",
    "32",
    "16",
    "bf16",
)

RULE = "rule"  # field metadata: the Rule of a value
KEYS = "keys"  # field metadata of an open group: the dataclass declaring the keys checked in it


@dataclass(frozen=True)
class Rule:
    """What a value must be beyond its type: one of ``choices``, within bounds, or pass ``problem``.

    Every float must also be finite. ``problem(key, value)`` returns a one-line message, or None when the
    value is fine, for checks that are not a range or a list (a file that must exist, a GPU that must be there).
    """

    choices: tuple[Any, ...] = ()
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False
    problem: Callable[[str, Any], str | None] | None = None


def rule(
    *,
    choices: tuple[Any, ...] = (),
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    problem: Callable[[str, Any], str | None] | None = None,
) -> dict[str, Rule]:
    """Field metadata: the rule a value must pass (``gt``/``ge``, ``lt``/``le``: the bounds, exclusive or not)."""
    return {
        RULE: Rule(
            choices=choices,
            minimum=gt if gt is not None else ge,
            exclusive_minimum=gt is not None,
            maximum=lt if lt is not None else le,
            exclusive_maximum=lt is not None,
            problem=problem,
        )
    }


def no_gpu(key: str, value: Any) -> str | None:
    """``accelerator=gpu`` on a machine without one: say so now rather than after the data is loaded."""
    if value not in ("gpu", "cuda"):
        return None
    import torch  # only here: importing torch costs a second of start-up

    if torch.cuda.is_available():
        return None
    return f"{key}={value} but no GPU is visible on this machine; use {key}=cpu or {key}=auto"


def not_a_checkpoint(key: str, value: Any) -> str | None:
    """A quick look before anything runs: the checkpoint to start from exists and is a ``torch.save`` zip archive.

    ``last`` means the run folder's own ``checkpoints/last.ckpt``; loading it (``weights_only=True``) is
    checked when training starts.
    """
    if value in (None, "", "last"):
        return None
    path = Path(str(value))
    if path.is_dir():
        return f"{key}={path}: a folder, not a checkpoint file"
    if not path.is_file():
        return f"{key}={path}: no such file"
    if not zipfile.is_zipfile(path):
        return f"{key}={path} is not a checkpoint (not a file written by torch.save)"
    return None


def not_devices(key: str, value: Any) -> str | None:
    """Lightning's ``devices``: ``auto``, a count (``-1`` for all), or the indices of the devices to use."""
    if isinstance(value, ListConfig | list):
        fine = len(value) > 0 and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
    elif isinstance(value, str):
        indices = [part.strip() for part in value.split(",") if part.strip()]
        fine = value == "auto" or (bool(indices) and all(index.lstrip("-").isdigit() for index in indices))
    else:
        fine = isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)
    if fine:
        return None
    return (
        f"{key}={shown(value)} is not allowed: {key} must be auto, a number of devices >= 1 (-1 for all), "
        f"or a list of device indices such as {key}=[0,1]"
    )


def not_pictures(key: str, value: Any) -> str | None:
    """``inputs``: a picture, a folder of pictures, or a list of them."""
    entries = list(value) if isinstance(value, ListConfig | list) else [value]
    if entries and all(isinstance(entry, str) and entry for entry in entries):
        return None
    return f"{key}={shown(value)}: give {key}=picture.png, {key}=some/folder or {key}=[a.png,b.jpg]"


@dataclass
class DatasetConfig:
    """``conf/dataset/``: keyword arguments of :class:`lenet_lightning.data.datamodule.MNISTDataModule`."""

    _target_: str = MISSING
    name: str = field(default=MISSING, metadata=rule(choices=DATASETS))
    data_dir: str = MISSING
    batch_size: int = field(default=MISSING, metadata=rule(ge=1))
    eval_batch_size: int | None = field(default=MISSING, metadata=rule(ge=1))
    val_size: int = field(default=MISSING, metadata=rule(ge=0, lt=TRAIN_EXAMPLES))
    seed: int = field(default=MISSING, metadata=rule(ge=0, le=SEED_MAX))
    download: bool = MISSING


@dataclass
class ModelConfig:
    """``conf/model/``: keyword arguments of :class:`lenet_lightning.model.lenet.LeNet`."""

    activation: str = field(default=MISSING, metadata=rule(choices=ACTIVATIONS))
    pooling: str = field(default=MISSING, metadata=rule(choices=POOLINGS))
    batch_norm: bool = MISSING
    dropout: float = field(default=MISSING, metadata=rule(ge=0, lt=1))


@dataclass
class OptimizerConfig:
    """``conf/optimizer/``: keyword arguments of ``torch.optim.SGD``."""

    lr: float = field(default=MISSING, metadata=rule(gt=0, le=FLOAT32_MAX))
    momentum: float = field(default=MISSING, metadata=rule(ge=0, lt=1))
    nesterov: bool = MISSING
    weight_decay: float = field(default=MISSING, metadata=rule(ge=0, le=FLOAT32_MAX))


@dataclass
class AugmentConfig:
    """``conf/augment/``: keyword arguments of :func:`lenet_lightning.data.augment.shift_and_flip`."""

    max_shift: int = field(default=MISSING, metadata=rule(ge=0))
    hflip: bool = MISSING


@dataclass
class SchedulerKeys:
    """``conf/scheduler/``: ``name`` plus keyword arguments of the torch scheduler (cosine or one-cycle)."""

    name: str = field(default=MISSING, metadata=rule(choices=SCHEDULERS))
    max_lr: float = field(default=MISSING, metadata=rule(gt=0, le=FLOAT32_MAX))
    eta_min: float = field(default=MISSING, metadata=rule(ge=0, le=FLOAT32_MAX))
    pct_start: float = field(default=MISSING, metadata=rule(gt=0, lt=1))
    div_factor: float = field(default=MISSING, metadata=rule(gt=0))
    final_div_factor: float = field(default=MISSING, metadata=rule(gt=0))
    anneal_strategy: str = field(default=MISSING, metadata=rule(choices=ANNEAL_STRATEGIES))
    cycle_momentum: bool = MISSING


@dataclass
class TrainerKeys:
    """``conf/trainer/``: keyword arguments of ``lightning.pytorch.Trainer``."""

    max_epochs: int = field(default=MISSING, metadata=rule(ge=1))  # -1 would train forever
    accelerator: str = field(default=MISSING, metadata=rule(choices=ACCELERATORS, problem=no_gpu))
    devices: Any = field(default=MISSING, metadata=rule(problem=not_devices))
    num_nodes: int = field(default=MISSING, metadata=rule(ge=1))
    precision: str = field(default=MISSING, metadata=rule(choices=PRECISIONS))
    sync_batchnorm: bool = MISSING
    log_every_n_steps: int = field(default=MISSING, metadata=rule(ge=1))


@dataclass
class DivergenceKeys:
    """``callbacks.divergence``: :class:`lenet_lightning.training.divergence.StopOnDivergence`."""

    check_every_n_steps: int = field(default=MISSING, metadata=rule(ge=1))


@dataclass
class ErrorAnalysisKeys:
    """``callbacks.error_analysis``: :class:`lenet_lightning.reporting.error_analysis.ErrorAnalysis`."""

    pr_curves: bool = MISSING
    projector_images: int = field(default=MISSING, metadata=rule(ge=0))


@dataclass
class CallbacksKeys:
    """``conf/callbacks/``: one entry per Lightning callback."""

    divergence: DivergenceKeys = MISSING
    error_analysis: ErrorAnalysisKeys = MISSING


@dataclass
class TrainConfig:
    """``conf/train.yaml``: ``python -m lenet_lightning.train``."""

    lr: float = field(default=MISSING, metadata=rule(gt=0, le=FLOAT32_MAX))
    epochs: int = field(default=MISSING, metadata=rule(ge=1))
    accelerator: str = field(default=MISSING, metadata=rule(choices=ACCELERATORS, problem=no_gpu))
    seed: int = field(default=MISSING, metadata=rule(ge=0, le=SEED_MAX))
    data_dir: str = MISSING
    output_dir: str = MISSING
    ckpt_path: str | None = field(default=MISSING, metadata=rule(problem=not_a_checkpoint))
    resume: str | None = MISSING
    compile: str | None = field(default=MISSING, metadata=rule(choices=COMPILE_MODES))
    memory_format: str = field(default=MISSING, metadata=rule(choices=MEMORY_FORMATS))
    fast_cpu_layers: bool = MISSING
    cuda_graph: bool = MISSING
    dataset: DatasetConfig = MISSING
    model: ModelConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: dict[str, Any] = field(default=MISSING, metadata={KEYS: SchedulerKeys})
    augment: AugmentConfig = MISSING
    trainer: dict[str, Any] = field(default=MISSING, metadata={KEYS: TrainerKeys})
    callbacks: dict[str, Any] = field(default=MISSING, metadata={KEYS: CallbacksKeys})
    logger: dict[str, Any] = MISSING


@dataclass
class EvalConfig:
    """``conf/eval.yaml``: ``python -m lenet_lightning.eval``."""

    ckpt_path: str | None = MISSING
    data_dir: str | None = MISSING
    output: str | None = MISSING
    overwrite: bool = MISSING
    accelerator: str = field(default=MISSING, metadata=rule(choices=ACCELERATORS, problem=no_gpu))
    pr_curves: bool = MISSING
    projector_images: int = field(default=MISSING, metadata=rule(ge=0))


@dataclass
class PredictConfig:
    """``conf/predict.yaml``: ``python -m lenet_lightning.predict``."""

    ckpt_path: str | None = MISSING
    invert: Any = field(default=MISSING, metadata=rule(choices=INVERT))
    output: str | None = MISSING
    overwrite: bool = MISSING
    batch_size: int = field(default=MISSING, metadata=rule(ge=1))
    accelerator: str = field(default=MISSING, metadata=rule(choices=ACCELERATORS, problem=no_gpu))
    inputs: Any = field(default=MISSING, metadata=rule(problem=not_pictures))  # last: other mistakes first


@dataclass
class ExportConfig:
    """``conf/export.yaml``: ``python -m lenet_lightning.export``."""

    ckpt_path: str | None = MISSING
    format: str = field(default=MISSING, metadata=rule(choices=EXPORT_FORMATS))
    output: str | None = MISSING
    overwrite: bool = MISSING
    data_dir: str | None = MISSING
    tolerance: float = field(default=MISSING, metadata=rule(gt=0))


# Command (primary config) name -> its schema; each is stored in the ConfigStore as "<command>_schema".
SCHEMAS: dict[str, type] = {
    "train": TrainConfig,
    "eval": EvalConfig,
    "predict": PredictConfig,
    "export": ExportConfig,
}


def register_schemas() -> None:
    """Put the schemas in Hydra's ConfigStore, where the defaults lists of ``conf/*.yaml`` find them."""
    store = ConfigStore.instance()
    for command, schema in SCHEMAS.items():
        store.store(name=f"{command}_schema", node=schema)


def check_config(cfg: DictConfig) -> None:
    """Raise a one-line :class:`UserError` for the first value its schema does not allow.

    Types were checked while Hydra composed the config; this adds what a type cannot say: deleted or
    unset keys, choices, ranges and finiteness, and the keys users set in open groups. Keys without a
    rule are not resolved here, so ``${hydra:...}`` values may stay unresolved until the job runs.
    """
    schema = OmegaConf.get_type(cfg)
    if not is_dataclass(schema):
        raise TypeError(f"the config has no schema (its type is {schema}); compose it from conf/")
    _check_node(cfg, schema, prefix="", is_open=False)


def _check_node(node: DictConfig, schema: type, prefix: str, is_open: bool) -> None:
    for spec in fields(schema):
        key = f"{prefix}{spec.name}"
        if spec.name not in node.keys():  # noqa: SIM118 (`in node` is False for ??? values)
            if is_open:
                continue
            raise UserError(f"{key} is required; instead of deleting it (~{key}), give it a value: {key}=...")
        if OmegaConf.is_missing(node, spec.name):
            raise UserError(f"{key} has no value (???); give it one with {key}=...")
        nested = spec.metadata.get(KEYS) or (spec.type if is_dataclass(spec.type) else None)
        if nested is None and RULE not in spec.metadata and not is_open:
            continue  # typed by OmegaConf already, and nothing more to check
        try:
            value = node[spec.name]
        except OmegaConfBaseException as error:
            raise UserError(f"{key}: {str(error).splitlines()[0]}") from None
        if nested is not None:
            if isinstance(value, DictConfig):
                _check_node(value, nested, prefix=f"{key}.", is_open=is_open or KEYS in spec.metadata)
            continue
        if is_open:  # an open group's value was not type-checked while composing: convert it as OmegaConf would
            value = _converted(schema, spec, key, value)
        if RULE in spec.metadata:
            _check_value(key, value, spec.type, spec.metadata[RULE])


def _converted(schema: type, spec: Field, key: str, value: Any) -> Any:
    typed = OmegaConf.structured(schema)
    try:
        typed[spec.name] = value
    except OmegaConfBaseException:
        raise UserError(f"{key}={shown(value)} is not allowed: {key} must be {_allowed(spec)}") from None
    return typed[spec.name]


def _check_value(key: str, value: Any, annotation: Any, rule: Rule) -> None:
    if rule.problem is not None:
        message = rule.problem(key, value)
        if message:
            raise UserError(message)
    if value is None:
        return  # only Optional fields get here: OmegaConf refuses None for the others
    if rule.choices:
        if not any(type(value) is type(choice) and value == choice for choice in rule.choices):
            options = [shown(choice) for choice in rule.choices]
            nearest = difflib.get_close_matches(shown(value), options, n=1, cutoff=0.5)
            hint = f" (did you mean {key}={nearest[0]}?)" if nearest else ""
            allowed = ", ".join((["null"] if _is_optional(annotation) else []) + options)
            raise UserError(f"{key}={shown(value)} is not one of {allowed}{hint}")
        return
    if (rule.minimum is not None or rule.maximum is not None) and not _in_range(value, rule):
        raise UserError(f"{key}={shown(value)} is not allowed: {key} must be {_words(annotation, rule)}")


def _in_range(value: Any, rule: Rule) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    if rule.minimum is not None and (value <= rule.minimum if rule.exclusive_minimum else value < rule.minimum):
        return False
    return rule.maximum is None or (value < rule.maximum if rule.exclusive_maximum else value <= rule.maximum)


def _words(annotation: Any, rule: Rule) -> str:
    """``a number > 0 and <= 3.4e+38``: what a range allows, for the error message."""
    is_int = annotation is int
    bounds = []
    if rule.minimum is not None:
        bounds.append(f"{'>' if rule.exclusive_minimum else '>='} {_bound(rule.minimum, is_int)}")
    if rule.maximum is not None:
        bounds.append(f"{'<' if rule.exclusive_maximum else '<='} {_bound(rule.maximum, is_int)}")
    kind = "an integer" if is_int else ("a number" if rule.maximum is not None else "a finite number")
    return f"{kind} {' and '.join(bounds)}"


def _bound(bound: float, is_int: bool) -> str:
    return str(int(bound)) if is_int or (float(bound).is_integer() and abs(bound) < 1e15) else f"{bound:.3g}"


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) is not None and type(None) in get_args(annotation)


def _allowed(spec: Field) -> str:
    """What a schema field allows, in words: its choices, its range, or its type."""
    rule: Rule | None = spec.metadata.get(RULE)
    optional = _is_optional(spec.type)
    base = next(t for t in get_args(spec.type) if t is not type(None)) if optional else spec.type
    if rule is not None and rule.choices:
        return "one of " + ", ".join((["null"] if optional else []) + [shown(choice) for choice in rule.choices])
    if rule is not None and (rule.minimum is not None or rule.maximum is not None):
        return _words(base, rule)
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string"}
    return names.get(base, "a value of the right type") + (" or null" if optional else "")


def describe(command: str, key: str) -> str | None:
    """What a dotted key of a command's schema must be, in words; None for a key the schema does not declare."""
    owner: Any = SCHEMAS[command]
    spec: Field | None = None
    for part in key.split("."):
        if spec is not None:
            owner = spec.metadata.get(KEYS, spec.type)
        if not is_dataclass(owner):
            return None
        spec = next((candidate for candidate in fields(owner) if candidate.name == part), None)
        if spec is None:
            return None
    return _allowed(spec) if spec is not None else None


def shown(value: Any) -> str:
    """A value as it would be typed on the command line: ``null``, ``true``, ``-1`` rather than ``-1.0``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    if isinstance(value, ListConfig | DictConfig):
        return str(OmegaConf.to_container(value))
    return str(value)
