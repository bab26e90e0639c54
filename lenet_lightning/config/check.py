"""Check the command line and the composed config before anything runs, and explain mistakes in one line.

Hydra reports a typo such as ``lrr=0.1`` in several lines without naming the key that was meant, and it
accepts ``lr=abc`` or ``epochs=0`` silently. This module composes the config the way Hydra will (so the
same overrides fail here first), rewrites Hydra's composition errors as one line with the nearest valid
key or the available options, and checks the types and ranges of the keys users type against one
declared schema (:data:`SCHEMA`).
"""

import difflib
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf

from lenet_lightning.config.errors import UserError
from lenet_lightning.config.location import CONFIG_DIR

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
MEMORY_FORMATS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class Rule:
    """The type and range a config value must have; ``kind`` is ``int`` or ``float``."""

    kind: type
    minimum: float | None = None
    exclusive_minimum: bool = False
    maximum: float | None = None
    exclusive_maximum: bool = False
    nullable: bool = False

    def allowed(self) -> str:
        """What the rule allows, in words, for the error message."""
        words = "an integer" if self.kind is int else "a number"
        bounds = []
        if self.minimum is not None:
            bounds.append(f"{'>' if self.exclusive_minimum else '>='} {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"{'<' if self.exclusive_maximum else '<='} {self.maximum:g}")
        return f"{words} {' and '.join(bounds)}".strip() + (" (or null)" if self.nullable else "")

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if self.minimum is not None and (value <= self.minimum if self.exclusive_minimum else value < self.minimum):
            return False
        return not (
            self.maximum is not None and (value >= self.maximum if self.exclusive_maximum else value > self.maximum)
        )


# The typed schema of the keys users set on the command line. Keys absent from a config are skipped, so
# configs without a section (or with extra variants) still validate.
SCHEMA: dict[str, Rule] = {
    "lr": Rule(float, minimum=0, exclusive_minimum=True),
    "epochs": Rule(int, minimum=1),
    "seed": Rule(int, minimum=0),
    "dataset.batch_size": Rule(int, minimum=1),
    "dataset.eval_batch_size": Rule(int, minimum=1),
    "dataset.val_size": Rule(int, minimum=0, maximum=59999),
    "optimizer.lr": Rule(float, minimum=0, exclusive_minimum=True),
    "optimizer.momentum": Rule(float, minimum=0, maximum=1, exclusive_maximum=True),
    "optimizer.weight_decay": Rule(float, minimum=0),
    "model.dropout": Rule(float, minimum=0, maximum=1, exclusive_maximum=True),
    "callbacks.divergence.check_every_n_steps": Rule(int, minimum=1),
}
FLAGS_WITH_VALUE = {
    "--config-name",
    "-cn",
    "--config-path",
    "-cp",
    "--config-dir",
    "-cd",
    "--cfg",
    "-c",
    "--package",
    "-p",
}
FLAGS_WITH_VALUE |= {"--experimental-rerun"}
HELP_FLAGS = {"--help", "-h", "--hydra-help", "--info", "-i", "--shell-completion", "-sc"}


def validate_config(cfg: DictConfig) -> None:
    """Raise :class:`UserError` naming the key, the value given and what is allowed, for the first bad key."""
    for key, rule in SCHEMA.items():
        if OmegaConf.select(cfg, key, default="<absent>", throw_on_missing=False) == "<absent>":
            continue
        value = OmegaConf.select(cfg, key)
        if not rule.accepts(value):
            raise UserError(f"{key}={value!r} is not allowed: {key} must be {rule.allowed()}")
    for key, choices in (("accelerator", ACCELERATORS), ("memory_format", MEMORY_FORMATS)):
        value = OmegaConf.select(cfg, key)
        if value is not None and value not in choices:
            raise UserError(f"{key}={value!r} is not allowed: choose one of {', '.join(choices)}")
    accelerator = OmegaConf.select(cfg, "accelerator")
    if accelerator in ("gpu", "cuda"):
        import torch  # only here: importing torch costs a second of start-up

        if not torch.cuda.is_available():
            raise UserError(
                f"accelerator={accelerator} but no GPU is visible on this machine; "
                "use accelerator=cpu or accelerator=auto"
            )


def config_name_of(args: list[str]) -> str:
    """The primary config a command line selects (``--config-name``/``-cn``), ``train`` by default."""
    for i, arg in enumerate(args):
        if arg in ("--config-name", "-cn") and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--config-name="):
            return arg.split("=", 1)[1]
    return "train"


def overrides_of(args: list[str]) -> list[str]:
    """The ``key=value`` overrides of a command line, without Hydra's own flags and their arguments."""
    overrides, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg in FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            overrides.append(arg)
    return overrides


def first_of_sweeps(overrides: list[str]) -> list[str]:
    """Replace each sweep (``lr=0.1,0.3``, ``range(...)``) by its first value, so one composition checks the keys.

    Every job of a sweep validates its own values again when it starts.
    """
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except OverrideParseException as error:
        raise UserError(f"cannot parse the command line: {str(error).splitlines()[0]}") from None
    result = []
    for override, text in zip(parsed, overrides, strict=True):
        if not override.is_sweep_override():
            result.append(text)
            continue
        try:
            first = next(iter(override.sweep_string_iterator()))
        except (ValueError, StopIteration):
            continue  # interval sweeps belong to a sweeper plugin; their jobs are checked when they start
        prefix = "+" if override.is_add() else ("++" if override.is_force_add() else "")
        result.append(f"{prefix}{override.get_key_element().lstrip('+~')}={first}")
    return result


def reject_sweeps(overrides: list[str]) -> None:
    """A sweep such as ``lr=0.1,0.3`` without ``-m``: say how to run it instead of Hydra's three-line hint."""
    for override in OverridesParser.create().parse_overrides(overrides):
        if override.is_sweep_override():
            raise UserError(
                f"{override.input_line} lists several values: add -m to run one job per value, "
                f"or quote it (key='a,b') to pass it as one string"
            )


def compose_checked(overrides: list[str], config_name: str = "train") -> DictConfig:
    """Compose the config as Hydra will (its ``hydra`` node included), turning composition errors into one line."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        try:
            return compose(config_name=config_name, overrides=first_of_sweeps(overrides), return_hydra_config=True)
        except MissingConfigException as error:
            raise UserError(_explain_missing(error)) from None
        except ConfigCompositionException as error:
            raise UserError(_explain_composition(error, valid_keys(compose(config_name=config_name)))) from None


def check_command_line(args: list[str], check_values: bool = True) -> DictConfig | None:
    """Compose (and with ``check_values``, validate) the config a command line asks for; ``None`` for help."""
    if HELP_FLAGS.intersection(args):
        return None
    cfg = compose_checked(overrides_of(args), config_name_of(args))
    if check_values:
        validate_config(cfg)
        check_checkpoint_path(cfg)
    return cfg


def check_checkpoint_path(cfg: DictConfig) -> None:
    """A quick look at ``ckpt_path`` before torch is imported: it exists and is a ``torch.save`` zip archive.

    The full check (loading it with ``weights_only=True``) happens before training starts.
    """
    ckpt_path = OmegaConf.select(cfg, "ckpt_path")
    if ckpt_path in (None, "", "last"):
        return
    path = Path(str(ckpt_path))
    if not path.is_file():
        raise UserError(f"ckpt_path={path}: {'a folder, not a checkpoint file' if path.is_dir() else 'no such file'}")
    if not zipfile.is_zipfile(path):
        raise UserError(f"ckpt_path={path} is not a checkpoint (not a file written by torch.save)")


def _explain_missing(error: MissingConfigException) -> str:
    """``dataset=fashon`` -> unknown dataset 'fashon'; available: fashion, mnist."""
    missing = error.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = sorted(error.options or [])
    if not group or not options:
        return str(error).splitlines()[0]
    nearest = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f" (did you mean {group}={nearest[0]}?)" if nearest else ""
    return f"unknown {group} {option!r}; available: {', '.join(options)}{hint}"


def _explain_composition(error: ConfigCompositionException, candidates: list[str]) -> str:
    """``lrr=0.1`` -> unknown config key 'lrr'; did you mean 'lr'?"""
    found = re.search(r"Could not (?:override|append to|delete from) '([^']+)'", str(error))
    if not found:
        return str(error).splitlines()[0]
    key = found.group(1)
    nearest = nearest_key(key, candidates)
    hint = f"; did you mean {nearest!r}?" if nearest else ""
    return (
        f"unknown config key {key!r}{hint} "
        "(list all keys with: python -m lenet_lightning.train --cfg job; add a new key with +key=value)"
    )


def valid_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of a config (groups included), the candidates for a suggestion."""
    keys: list[str] = []

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, DictConfig):
            for child in node:
                path = f"{prefix}{child}"
                keys.append(path)
                walk(node._get_node(child), f"{path}.")

    walk(cfg, "")
    return [key for key in keys if not key.split(".")[-1].startswith("_")]


def nearest_key(key: str, candidates: list[str]) -> str | None:
    """The valid key closest to a mistyped one: by its last part first, then by the whole path."""
    last = key.split(".")[-1]
    same_last = [c for c in candidates if difflib.get_close_matches(last, [c.split(".")[-1]], n=1, cutoff=0.6)]
    pool = same_last or candidates
    best = difflib.get_close_matches(key, pool, n=1, cutoff=0.0 if same_last else 0.6)
    return best[0] if best else None
