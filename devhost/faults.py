"""``devhost run --faults SPEC`` (and ``demo``): the simulator's random faults from one flag.

``SPEC`` is a comma-separated list of ``KIND=VALUE``:

* an HTTP status 400-599, e.g. ``500=0.1``, ``503=0.05``, ``429=0.2``: that share of calls is
  answered with that status (a 429 carries the simulator's retry-after headers);
* ``timeout=RATE``: the simulator holds the call past the app's timeout, then answers 408;
* ``malformed=RATE``: an answer whose content is not JSON;
* ``schema=RATE``: valid JSON that breaks the requested schema;
* ``content_filter=RATE``: the prompt (HTTP 400) or the completion is refused by the filter;
* ``seed=N``: the seed of the fault draws, so a run's sequence of faults repeats;
* ``timeout_s=SECONDS``: how long a ``timeout`` fault holds the call (default 60).

Rates are probabilities in [0, 1] drawn per call, and together must not pass 1. What the app
does with each is what it does against Azure: retries with backoff (each attempt a span in the
dashboard's waterfall), the circuit breaker opening on repeated failures, a message re-sent for
later, and in the end a dead letter with its reason (``devhost dlq list``, ``status --json``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from devhost.simulator.config import ConfigValueError, Faults

KINDS = {
    "timeout": "--timeout-rate",
    "malformed": "--malformed-rate",
    "schema": "--schema-rate",
    "content_filter": "--content-filter-rate",
}
SETTINGS = {"seed": "--seed", "timeout_s": "--timeout-s"}
EXAMPLE = "500=0.1,timeout=0.05,malformed=0.05,seed=7"


class FaultSpecError(ValueError):
    """A ``--faults`` value devhost cannot use; the message says which part and why."""


@dataclass(frozen=True)
class FaultPlan:
    """The faults a ``--faults`` value asks for, checked by the simulator's own rules."""

    error_rates: dict[int, float] = field(default_factory=dict)
    rates: dict[str, float] = field(default_factory=dict)
    seed: int | None = None
    timeout_s: float | None = None

    def simulator_args(self) -> list[str]:
        """The simulator's command-line flags for these faults."""
        args: list[str] = []
        for status, rate in sorted(self.error_rates.items()):
            args += ["--error-rate", f"{status}={rate!r}"]
        for kind, rate in sorted(self.rates.items()):
            args += [KINDS[kind], repr(rate)]
        if self.seed is not None:
            args += ["--seed", str(self.seed)]
        if self.timeout_s is not None:
            args += ["--timeout-s", repr(self.timeout_s)]
        return args

    def describe(self) -> str:
        """The faults in words, for the banner."""
        parts = [f"HTTP {s} {r:.0%}" for s, r in sorted(self.error_rates.items())]
        parts += [
            f"{kind.replace('_', ' ')} {rate:.0%}" for kind, rate in sorted(self.rates.items())
        ]
        if self.seed is not None:
            parts.append(f"seed {self.seed}")
        return ", ".join(parts) or "none"


def parse_faults(spec: str) -> FaultPlan:
    """The plan ``spec`` describes; ``FaultSpecError`` naming the part that is wrong."""
    error_rates: dict[int, float] = {}
    rates: dict[str, float] = {}
    settings: dict[str, float | int] = {}
    seen: set[str] = set()
    parts = [part.strip() for part in spec.split(",")]
    if not any(parts):
        raise FaultSpecError(f"--faults is empty; e.g. --faults {EXAMPLE}")
    for part in parts:
        kind, sep, value = (text.strip() for text in part.partition("="))
        kind = kind.lower().replace("-", "_")
        if not sep or not kind or not value:
            raise FaultSpecError(f"--faults: {part!r} is not KIND=VALUE (e.g. {EXAMPLE})")
        if kind in seen:
            raise FaultSpecError(f"--faults: {kind} is given twice")
        seen.add(kind)
        if kind == "seed":
            settings["seed"] = _integer(value, part)
        elif kind == "timeout_s":
            settings["timeout_s"] = _positive(value, part)
        elif kind in KINDS:
            rates[kind] = _rate(value, part)
        elif kind.isdigit():
            status = int(kind)
            if not 400 <= status <= 599:
                raise FaultSpecError(f"--faults: {part!r}: an HTTP status must be 400-599")
            error_rates[status] = _rate(value, part)
        else:
            known = ", ".join([*KINDS, *SETTINGS])
            raise FaultSpecError(
                f"--faults: unknown fault {kind!r} in {part!r}; use an HTTP status (400-599) "
                f"or one of {known}"
            )
    total = sum(error_rates.values()) + sum(rates.values())
    if total > 1.0 + 1e-9:
        raise FaultSpecError(f"--faults: the rates add up to {total:g}; together at most 1")
    plan = FaultPlan(
        error_rates,
        rates,
        seed=int(settings["seed"]) if "seed" in settings else None,
        timeout_s=float(settings["timeout_s"]) if "timeout_s" in settings else None,
    )
    _check(plan)
    return plan


def _check(plan: FaultPlan) -> None:
    """The simulator's own validation of the same values, so devhost never starts one it
    would refuse."""
    try:
        Faults(
            error_rates=dict(plan.error_rates),
            timeout_rate=plan.rates.get("timeout", 0.0),
            malformed_json_rate=plan.rates.get("malformed", 0.0),
            schema_violation_rate=plan.rates.get("schema", 0.0),
            content_filter_rate=plan.rates.get("content_filter", 0.0),
            seed=plan.seed,
            **({} if plan.timeout_s is None else {"timeout_s": plan.timeout_s}),
        )
    except ConfigValueError as exc:
        raise FaultSpecError(f"--faults: {exc}") from None


def _number(value: str, part: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise FaultSpecError(f"--faults: {part!r}: {value!r} is not a number") from None


def _rate(value: str, part: str) -> float:
    rate = _number(value, part)
    if not 0.0 <= rate <= 1.0:
        raise FaultSpecError(f"--faults: {part!r}: a rate is a probability in [0, 1]")
    return rate


def _integer(value: str, part: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise FaultSpecError(f"--faults: {part!r}: {value!r} is not an integer") from None


def _positive(value: str, part: str) -> float:
    seconds = _number(value, part)
    if not (math.isfinite(seconds) and seconds > 0):
        raise FaultSpecError(f"--faults: {part!r}: must be more than 0 seconds")
    return seconds
