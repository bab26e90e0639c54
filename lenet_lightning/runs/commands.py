"""Command lines printed for the user to paste, and the command-line overrides of a run as Hydra parses them.

:func:`override` writes a value as Hydra's override grammar reads it back, :func:`shell_word` quotes for the
shell, and :func:`hydra_safe_arguments` lets users type ``resume=<folder>`` with any folder name (sweep job
folders are named ``epochs=2,lr=0.3``).
"""

import shlex

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException

from lenet_lightning.errors import UserError

PATH_KEYS = ("resume", "ckpt_path", "hydra.run.dir", "hydra.sweep.dir")  # file and folder names, taken literally
TOOL_PATH_KEYS = ("ckpt_path", "output", "data_dir")  # eval, predict, export: file and folder names taken literally
COMMAND = "python -m lenet_lightning.train"


def parse_overrides(overrides: list[str]) -> list[Override]:
    """Hydra's reading of command-line overrides; a parse error is one line."""
    try:
        return OverridesParser.create().parse_overrides(overrides)
    except HydraException as error:
        raise UserError(f"cannot parse the overrides {overrides}: {str(error).splitlines()[0]}") from None


def override_keys(overrides: list[str]) -> list[str]:
    """The key (or config group) of each override, as Hydra parses it: ``+a.b=1`` and ``~a.b`` both mean ``a.b``."""
    return [override.key_or_group for override in parse_overrides(overrides)]


def quoted(value: str) -> str:
    """``value`` as a quoted Hydra override value: any characters, read back unchanged.

    In Hydra's quoted strings a backslash escapes only a quote or the backslashes before one (or before the
    closing quote); every other backslash is taken as it is.
    """
    escaped = []
    backslashes = 0
    for character in value:
        if character == "\\":
            backslashes += 1
            continue
        escaped.append("\\" * (backslashes * (2 if character == "'" else 1)))
        escaped.append("\\'" if character == "'" else character)
        backslashes = 0
    escaped.append("\\" * (backslashes * 2))  # before the closing quote
    return "'" + "".join(escaped) + "'"


def override(key: str, value: str) -> str:
    """``key=value`` that Hydra reads back with exactly ``value``: quoted only when it has to be."""
    try:
        (parsed,) = parse_overrides([f"{key}={value}"])
    except UserError:
        return f"{key}={quoted(value)}"
    return f"{key}={value}" if parsed.value() == value else f"{key}={quoted(value)}"


def shell_word(argument: str) -> str:
    """``argument`` as one shell word: as it is when safe, else in double quotes when they read better than shlex's."""
    word = shlex.quote(argument)
    if word != argument and not set('"$`\\!') & set(argument):
        return f'"{argument}"'
    return word


def train_command(*overrides: str) -> str:
    """The training command line with these overrides, ready to paste into a shell."""
    return " ".join([COMMAND, *(shell_word(item) for item in overrides)])


def hydra_safe_arguments(arguments: list[str], path_keys: tuple[str, ...] = PATH_KEYS) -> list[str]:
    """Command-line arguments with file and folder names (``resume=``, ``hydra.run.dir=``...) quoted as Hydra needs.

    A folder or file name is taken literally, whatever it holds: ``resume=outputs/multirun/.../lr=0.3,epochs=2``
    (a sweep job) would otherwise be a parse error or a sweep over two values, and non-ASCII letters, ``~`` or
    ``#`` parse errors. Values Hydra reads as one plain value (a quoted one included) are left as typed.
    """
    safe = []
    for argument in arguments:
        key, separator, value = argument.partition("=")
        if separator and key in path_keys and _needs_quotes(argument):
            argument = f"{key}={quoted(value)}"
        safe.append(argument)
    return safe


def _needs_quotes(argument: str) -> bool:
    try:
        (parsed,) = parse_overrides([argument])
    except UserError:
        return True
    return not isinstance(parsed.value(), str | int | float | bool | None)


def printable(text: str, limit: int = 80) -> str:
    """Text from a file or folder name as one safe line: control characters (newlines, terminal escapes) escaped.

    A damaged lock file or a hostile file name must neither cut an error message short nor reach the terminal raw.
    """
    safe = "".join(character if character.isprintable() else repr(character)[1:-1] for character in text)
    return safe if len(safe) <= limit else safe[: limit - 1] + "…"


def first_names(names: list[str], most: int = 4) -> str:
    """The first ``most`` of a folder's entries, printable, for a message that says what is in the way."""
    return ", ".join(printable(name) for name in names[:most]) + (", ..." if len(names) > most else "")
