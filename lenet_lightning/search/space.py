"""The search space of ``hydra.sweeper.params``, written in Hydra's sweep grammar, as Optuna distributions.

The grammar is the one users already type for grid sweeps, so a space reads the same in YAML and on the command
line: ``interval(0.01, 3)`` a float range (``tag(log, interval(...))`` sampled on a log scale, ``tag(int, ...)``
whole numbers), ``range(1, 5)`` the integers 1..4, ``choice(a, b)`` one of the values. A plain value is not
searched: every trial gets it.
"""

from collections.abc import Mapping
from typing import Any

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep
from hydra.errors import OverrideParseException
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution

from lenet_lightning.errors import UserError

Value = int | float | str | bool | None


def search_space(params: Mapping[str, Any]) -> tuple[dict[str, BaseDistribution], dict[str, Value]]:
    """The searched keys as distributions and the keys every trial fixes; an empty or impossible space is refused."""
    space: dict[str, BaseDistribution] = {}
    fixed: dict[str, Value] = {}
    parser = OverridesParser.create()
    for key, text in params.items():
        try:
            (parsed,) = parser.parse_overrides([f"{key}={text}"])
        except OverrideParseException as error:
            reason = " ".join(str(error).split("\n")[1:2]) or str(error)
            raise UserError(f"the search space {key}={text} cannot be read: {reason}") from None
        value = parsed.value()
        if parsed.is_sweep_override():
            space[key] = distribution(key, text, value)
        else:
            fixed[key] = value
    if not space:
        raise UserError(
            "hydra.sweeper.params has nothing to search; give at least one key a range, e.g. "
            "hydra.sweeper.params.lr='tag(log, interval(0.01, 3))'"
        )
    return space, fixed


def distribution(key: str, text: str, sweep: Any) -> BaseDistribution:
    """One key's distribution; the message names the key and the fix when the range holds no value."""
    where = f"the search space {key}={text}"
    if isinstance(sweep, IntervalSweep):
        low, high = sweep.start, sweep.end
        if not low < high:
            raise UserError(f"{where} is empty: the interval's start must be below its end")
        log = "log" in sweep.tags
        if log and low <= 0:
            raise UserError(f"{where}: a log-scale interval must start above 0")
        if "int" in sweep.tags:
            return IntDistribution(int(low), int(high), log=log)
        return FloatDistribution(low, high, log=log)
    if isinstance(sweep, RangeSweep):
        values = list(sweep.range())
        if not values:
            raise UserError(f"{where} is empty: range(start, stop) counts from start up to, not including, stop")
        return CategoricalDistribution(values)
    if isinstance(sweep, ChoiceSweep):
        return CategoricalDistribution(list(dict.fromkeys(sweep.list)))
    raise UserError(f"{where} is not a search Optuna can sample: use interval(...), range(...) or choice(...)")


def extremes(distribution: BaseDistribution) -> list[Value]:
    """The values a trial may take that are most likely to break a rule: each end of a range, every choice."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    return [distribution.low, distribution.high]


def as_override(key: str, value: Value) -> str:
    """``key=value`` as Hydra reads it back: numbers in full precision, ``null`` for None."""
    if value is None:
        return f"{key}=null"
    if isinstance(value, bool):
        return f"{key}={str(value).lower()}"
    return f"{key}={value!r}" if isinstance(value, float) else f"{key}={value}"
