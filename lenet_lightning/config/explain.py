"""Hydra's and OmegaConf's reports of a bad command line, rewritten as one line that names the key and the fix.

Hydra reports a typo such as ``lrr=0.1`` in several lines without naming the key that was meant, and a
value of the wrong type as a chain of exceptions. Here each becomes one line: the nearest valid key, the
available options, or what the schema allows for the key.
"""

import difflib
import functools
import re
from typing import Any

from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig
from omegaconf.errors import ConfigTypeError, ValidationError

from lenet_lightning.config.location import CONFIG_DIR
from lenet_lightning.config.schema import describe, shown


def explain(error: Exception, command: str) -> str:
    """One line for a bad command line of ``command`` (``train``, ``eval``, ...), from the error Hydra raised."""
    if isinstance(error, MissingConfigException):
        return _explain_missing(error)
    if isinstance(error, OverrideParseException):
        return f"cannot parse the command line: {_first_line(error)}"
    cause = error.__cause__ if isinstance(error, ConfigCompositionException) else error
    if isinstance(cause, ValidationError) and cause.full_key:
        return _explain_value(cause, command)
    if isinstance(cause, ConfigTypeError) and "does not support deletion" in str(cause):
        key = cause.full_key
        return f"{key} is required; instead of deleting it (~{key}), give it a value: {key}=..."
    if isinstance(error, ConfigCompositionException):
        sweep = re.match(r"Ambiguous value for argument '([^']+)'", str(error))
        if sweep:
            return (
                f"{sweep.group(1)} lists several values: add -m to run one job per value, "
                "or quote it (key='a,b') to pass it as one string"
            )
        return _explain_composition(error, valid_keys(_default_config(command)), command)
    return _first_line(error)


def explain_null_group(arguments: list[str], command: str) -> str:
    """``callbacks=null`` -> a config group cannot be null: how to turn its entries off instead."""
    groups = sorted(path.name for path in CONFIG_DIR.iterdir() if path.is_dir() and path.name != "hydra")
    nulled = [argument.split("=")[0] for argument in arguments if argument.split("=")[0] in groups]
    group = nulled[0] if nulled else "a config group"
    options = sorted(path.stem for path in (CONFIG_DIR / group).glob("*.yaml")) if nulled else []
    hint = f"; to turn one entry off give {group}.<name>=null" if group == "callbacks" else ""
    return f"{group}=null: {group} is a config group and needs one of its options ({', '.join(options)}){hint}"


def _explain_value(error: ValidationError, command: str) -> str:
    """``lr=abc`` -> lr=abc is not allowed: lr must be a number > 0 and <= 3.4e+38."""
    key = str(error.full_key)
    allowed = describe(command, key)
    if allowed is None:
        return f"{key}={shown(error.value)}: {_first_line(error)}"
    return f"{key}={shown(error.value)} is not allowed: {key} must be {allowed}"


def _explain_missing(error: MissingConfigException) -> str:
    """``dataset=fashon`` -> unknown dataset 'fashon'; available: fashion, mnist."""
    missing = error.missing_cfg_file or ""
    group, _, option = missing.rpartition("/")
    options = sorted(error.options or [])
    if not group or not options:
        return _first_line(error)
    nearest = difflib.get_close_matches(option, options, n=1, cutoff=0.5)
    hint = f" (did you mean {group}={nearest[0]}?)" if nearest else ""
    return f"unknown {group} {option!r}; available: {', '.join(options)}{hint}"


def _explain_composition(error: ConfigCompositionException, candidates: list[str], command: str) -> str:
    """``lrr=0.1`` -> unknown config key 'lrr'; did you mean 'lr'?"""
    taken = re.search(r"An item is already at '([^']+)'", str(error))
    if taken:
        return f"{taken.group(1)} already exists: set it without the +, {taken.group(1)}=..."
    found = re.search(r"Could not (?:override|delete from config\.) '([^']+)'", str(error))
    if not found:
        return _first_line(error)
    key = found.group(1)
    nearest = nearest_key(key, candidates)
    hint = f"; did you mean {nearest!r}?" if nearest else ""
    return (
        f"unknown config key {key!r}{hint} "
        f"(list all keys with: python -m lenet_lightning.{command} --cfg job; add a new key with +key=value)"
    )


@functools.cache  # composed once a process: every job of a sweep with the same typo asks again
def _default_config(command: str) -> DictConfig:
    """The command's config with no overrides: where the keys a typo was meant as come from (error path only)."""
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        return compose(config_name=command)


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


def _first_line(error: BaseException) -> str:
    return str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
