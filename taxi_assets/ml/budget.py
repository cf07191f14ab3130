"""Time budgets and stop requests for long steps (no Dagster here).

A :class:`Budget` is a deadline on the monotonic clock plus a way to learn that the work should be
abandoned (the run was terminated, or it died). Long loops (boosting rounds, tree batches, SHAP
chunks, lookup-table chunks) call :meth:`Budget.check` between units of work, which raises
:class:`Stopped` when asked to stop, and consult :meth:`Budget.expired` to end gracefully with what
they have. Python handles signals only between bytecodes, so a unit of work that is one long C
call (a ``Booster.predict``) must stay short: that is what the chunking is for.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


class Stopped(Exception):
    """The work was asked to stop (its run was terminated, failed or lost); nothing is kept."""


def _never() -> str | None:
    return None


@dataclass(frozen=True)
class Budget:
    """A deadline (``time.monotonic()`` seconds, None for none) and a stop request.

    ``stop_reason()`` returns why the work must stop, or None to go on; it is called often, so it
    must be cheap (the Dagster layer answers from a flag that a watcher thread sets).
    """

    deadline: float | None = None
    stop_reason: Callable[[], str | None] = field(default=_never, compare=False)

    @classmethod
    def seconds(cls, seconds: float | None, stop_reason: Callable[[], str | None] = _never) -> Budget:
        return cls(None if seconds is None else time.monotonic() + seconds, stop_reason)

    def remaining(self) -> float:
        """Seconds left (infinity without a deadline; never negative)."""
        if self.deadline is None:
            return float("inf")
        return max(0.0, self.deadline - time.monotonic())

    def expired(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    def check(self) -> None:
        """Raise :class:`Stopped` if the work was asked to stop."""
        reason = self.stop_reason()
        if reason:
            raise Stopped(reason)

    def until(self, seconds_before_end: float) -> Budget:
        """The same budget ending ``seconds_before_end`` earlier (for a phase that must leave
        time to the ones after it)."""
        if self.deadline is None:
            return self
        return Budget(self.deadline - seconds_before_end, self.stop_reason)

    def share(self, seconds: float) -> Budget:
        """At most ``seconds`` from now, and never past this budget's own deadline."""
        end = time.monotonic() + seconds
        return Budget(end if self.deadline is None else min(end, self.deadline), self.stop_reason)


UNLIMITED = Budget()
