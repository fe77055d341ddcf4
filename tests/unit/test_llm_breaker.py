"""Circuit breakers per deployment, on a hand-moved clock."""

from __future__ import annotations

from shared.llm.breaker import BreakerPolicy, Breakers, BreakerState, CircuitBreaker
from tests.support.clock import ManualClock

POLICY = BreakerPolicy(failures=3, cooldown_s=10.0, error_rate=0.5, window_s=30.0, min_calls=6)


def _breaker(
    clock: ManualClock, changes: list[tuple[str, BreakerState]] | None = None
) -> CircuitBreaker:
    def record(name: str, state: BreakerState) -> None:
        if changes is not None:
            changes.append((name, state))

    return CircuitBreaker("d", POLICY, clock=clock, on_change=record)


def test_consecutive_failures_open_the_circuit() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(2):
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert not breaker.can_call()
    assert breaker.retry_in() == 10.0


def test_a_success_resets_the_consecutive_count() -> None:
    breaker = _breaker(ManualClock())
    for _ in range(2):
        breaker.failure()
    breaker.success()
    for _ in range(2):
        breaker.failure()
    assert breaker.state is BreakerState.CLOSED


def test_a_high_error_rate_opens_the_circuit_without_a_failure_streak() -> None:
    breaker = _breaker(ManualClock())
    for _ in range(3):
        breaker.success()
        breaker.failure()
    assert breaker.state is BreakerState.OPEN


def test_old_results_fall_out_of_the_error_rate_window() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(2):
        breaker.failure()
        breaker.success()
    clock.advance(31.0)
    for _ in range(4):
        breaker.success()
    breaker.failure()
    assert breaker.state is BreakerState.CLOSED


def test_after_the_cooldown_exactly_one_probe_goes_through() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.advance(10.0)
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.acquire()
    assert not breaker.acquire()


def test_a_successful_probe_closes_the_circuit() -> None:
    clock = ManualClock()
    changes: list[tuple[str, BreakerState]] = []
    breaker = _breaker(clock, changes)
    for _ in range(3):
        breaker.failure()
    clock.advance(10.0)
    assert breaker.acquire()
    breaker.success()
    assert breaker.state is BreakerState.CLOSED
    assert [state for _, state in changes] == [
        BreakerState.OPEN,
        BreakerState.HALF_OPEN,
        BreakerState.CLOSED,
    ]


def test_a_failed_probe_reopens_the_circuit_for_longer() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.advance(10.0)
    assert breaker.acquire()
    breaker.failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.retry_in() == 20.0


def test_a_cancelled_probe_lets_another_caller_probe() -> None:
    clock = ManualClock()
    breaker = _breaker(clock)
    for _ in range(3):
        breaker.failure()
    clock.advance(10.0)
    assert breaker.acquire()
    breaker.cancel()
    assert breaker.acquire()


def test_each_deployment_has_its_own_breaker() -> None:
    breakers = Breakers(POLICY, clock=ManualClock())
    for _ in range(3):
        breakers.for_deployment("a").failure()
    assert breakers.for_deployment("a").state is BreakerState.OPEN
    assert breakers.for_deployment("b").state is BreakerState.CLOSED
