"""The one retry policy (tenacity) for every store call, and the circuit breaker a sync puts in front of it.

Only TransientError is retried: exponential backoff with jitter, bounded by the number of
attempts and by the total time. The sleep function is injectable, so tests check the
schedule without waiting. Each retry is logged with the attempt number and the wait.

A sync also gives the policy a CircuitBreaker: once a few calls in a row have failed every
retry, the store is treated as down and calls fail at once (CircuitOpenError) instead of each
spending a whole retry schedule; the sync probes the store now and then and resumes its writes
when a probe succeeds.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timezone
from typing import Callable, TypeVar

import tenacity

from connector.errors import TransientError

log = logging.getLogger("connector.retry")
T = TypeVar("T")


class RetryPolicy:
    """Retry a call while it raises TransientError, as the `retry:` config section says."""

    def __init__(self, config=None, sleep: Callable[[float], None] = time.sleep):
        from connector.config import RetryConfig

        self.config = config or RetryConfig()
        self.sleep = sleep
        self.breaker: CircuitBreaker | None = None  # set by a sync for the time it runs

    def _retrying(self, operation: str, attempts: int) -> tenacity.Retrying:
        c = self.config

        def log_wait(state: tenacity.RetryCallState) -> None:
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                operation, state.attempt_number, attempts, state.next_action.sleep, state.outcome.exception(),
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_after_delay(c.max_total_seconds),
            wait=tenacity.wait_exponential_jitter(
                multiplier=c.initial_wait, max=c.max_wait, exp_base=c.multiplier, jitter=c.jitter
            ),
            sleep=self.sleep,
            before_sleep=log_wait,
            reraise=True,
        )

    def call(self, operation: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn`; retry it on TransientError; re-raise the last error when the policy gives up,
        with the number of attempts made in its `attempts` attribute. With a breaker: nothing is
        tried while it is open, and a call after a failed one is tried once, not retried."""
        breaker = self.breaker
        if breaker is not None and breaker.is_open:
            raise CircuitOpenError(f"{operation} was not tried: {breaker.describe()}")
        attempts = 1 if breaker is not None and breaker.failures else self.config.attempts
        retrying = self._retrying(operation, attempts)
        try:
            result = retrying(fn, *args, **kwargs)
        except Exception as err:
            err.attempts = retrying.statistics.get("attempt_number", 1)
            if breaker is not None:
                breaker.failed() if isinstance(err, TransientError) else breaker.succeeded()
            raise
        if breaker is not None:
            breaker.succeeded()
        return result


class CircuitOpenError(TransientError):
    """The store is treated as down (the circuit is open): the call was not made."""


def wall_clock() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class CircuitBreaker:
    """Tracks whether a store is reachable, for a sync that must not spend a retry schedule per batch
    while the store is down.

    closed  calls go through the retry policy. Once one has failed every retry, the next calls are
            tried once each; after `threshold` failed calls in a row the circuit opens.
    open    calls fail at once with CircuitOpenError. The caller probes the store with one small
            request when `probe_due()`: after 1 s, then 2, 4, ... up to `max_interval` seconds (the
            interval keeps growing until a real call succeeds). A successful probe closes the
            circuit, so that the caller tries its writes again.
    The store counts as down from the first failed call until a real call (not a probe) succeeds:
    `budget_spent()` says when that has added up to `budget` seconds in this run, so a store that
    answers probes but keeps failing writes cannot hold a sync for longer than a store that is gone.
    Only the sync's write stage (one thread) uses a breaker. `clock` is injectable for tests.
    """

    def __init__(self, threshold: int = 3, budget: float = 300.0, first_interval: float = 1.0,
                 max_interval: float = 30.0, clock: Callable[[], float] = time.monotonic):
        self.threshold = threshold
        self.budget = budget
        self.first_interval = first_interval
        self.max_interval = max_interval
        self.clock = clock
        self.failures = 0  # calls in a row that failed every retry
        self.outages: list[dict] = []  # {"started", "ended" (None while down), "probes"}: for reports
        self._open = False
        self._down_since: float | None = None  # first failed call of the current streak
        self._interval = first_interval
        self._next_probe = 0.0
        self._spent_before = 0.0  # seconds of earlier outages of this run

    @property
    def is_open(self) -> bool:
        return self._open

    def failed(self) -> None:
        """A call failed every retry with a transient error."""
        self.failures += 1
        if self._down_since is None:
            self._down_since = self.clock()
        if not self._open and self.failures >= self.threshold:
            self._open = True
            if not self.outages or self.outages[-1]["ended"] is not None:
                self.outages.append({"started": wall_clock(), "ended": None, "probes": 0})
            self._next_probe = self.clock() + self._interval
            log.warning("the store failed %d calls in a row: writes pause, encoding goes on; probing it in %.0fs",
                        self.failures, self._interval)

    def succeeded(self) -> None:
        """A real call got an answer from the store (even an error that is not transient)."""
        self.failures = 0
        self._open = False
        self._interval = self.first_interval
        if self._down_since is not None:
            self._spent_before += self.clock() - self._down_since
            self._down_since = None
        if self.outages and self.outages[-1]["ended"] is None:
            self.outages[-1]["ended"] = wall_clock()
            log.warning("the store answers again: writes resume")

    def probe_due(self) -> bool:
        return self._open and self.clock() >= self._next_probe

    def seconds_to_next_probe(self) -> float:
        return max(0.0, self._next_probe - self.clock()) if self._open else 0.0

    def probe(self, request: Callable[[], object]) -> bool:
        """Send one small request (no retries). If the store answers, close the circuit so that the
        caller tries again; the next failed call opens it at once, and the probes go on at a
        growing interval."""
        self.outages[-1]["probes"] += 1
        self._interval = min(self._interval * 2, self.max_interval)
        try:
            request()
        except TransientError as err:
            self._next_probe = self.clock() + self._interval
            log.info("store probe failed, next in %.0fs: %s", self._interval, err)
            return False
        except Exception:  # noqa: BLE001 - any answer means the store is there again
            pass
        self._open = False
        self.failures = self.threshold - 1  # half-open: one more failed call and it is open again
        return True

    def seconds_down(self) -> float:
        """Seconds the store has been down in this run, the current outage included."""
        current = self.clock() - self._down_since if self._down_since is not None else 0.0
        return self._spent_before + current

    def budget_spent(self) -> bool:
        return self._down_since is not None and self.seconds_down() >= self.budget

    def describe(self) -> str:
        if not self.outages or self.outages[-1]["ended"] is not None:
            return "the store answers"
        return f"the store is unreachable since {self.outages[-1]['started']} (circuit open)"
