"""The one retry policy (tenacity) for every store call.

Only TransientError is retried: exponential backoff with jitter, bounded by the number of
attempts and by the total time. The sleep function is injectable, so tests check the
schedule without waiting. Each retry is logged with the attempt number and the wait.
"""

from __future__ import annotations

import logging
import time
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

    def _retrying(self, operation: str) -> tenacity.Retrying:
        c = self.config

        def log_wait(state: tenacity.RetryCallState) -> None:
            log.warning(
                "%s failed (attempt %d of %d), retrying in %.2fs: %s",
                operation, state.attempt_number, c.attempts, state.next_action.sleep, state.outcome.exception(),
            )

        return tenacity.Retrying(
            retry=tenacity.retry_if_exception_type(TransientError),
            stop=tenacity.stop_after_attempt(c.attempts) | tenacity.stop_after_delay(c.max_total_seconds),
            wait=tenacity.wait_exponential_jitter(
                multiplier=c.initial_wait, max=c.max_wait, exp_base=c.multiplier, jitter=c.jitter
            ),
            sleep=self.sleep,
            before_sleep=log_wait,
            reraise=True,
        )

    def call(self, operation: str, fn: Callable[..., T], *args, **kwargs) -> T:
        """Run `fn`; retry it on TransientError; re-raise the last error when the policy gives up,
        with the number of attempts made in its `attempts` attribute."""
        retrying = self._retrying(operation)
        try:
            return retrying(fn, *args, **kwargs)
        except Exception as err:
            err.attempts = retrying.statistics.get("attempt_number", 1)
            raise
