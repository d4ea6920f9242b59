"""The waits between attempts at the audit write inside a job: exponential with jitter, cut to DB_RETRY_WINDOW."""

from __future__ import annotations

import pytest

from kpi_export.runtime.backoff import LONGEST, backoff


@pytest.mark.parametrize(
    ("retry", "elapsed", "window", "draw", "expected"),
    [
        # well inside the window: 0.1 s doubled each retry, plus the jitter, at most 5 s
        (1, 0.0, 30, 0.0, 0.1),
        (1, 0.0, 30, 0.5, 0.6),
        (2, 0.1, 30, 0.0, 0.2),
        (3, 0.3, 30, 0.25, 0.65),
        (5, 1.5, 30, 0.0, 1.6),
        (6, 3.1, 30, 0.9, 4.1),
        (7, 6.3, 30, 0.0, 5.0),  # 6.4 s capped
        (7, 6.3, 30, 0.99, 5.0),  # the jitter too
        (10_000, 20.0, 3600, 0.5, 5.0),  # far on: no overflow, still the cap
        # the last wait is cut so that the last attempt starts as the window ends
        (6, 5.7, 8, 0.5, 2.3),  # 3.7 s would end at 9.4 s: cut to 2.3 s
        (7, 7.9, 8, 0.0, 0.1),  # 5 s cut to what is left
        (1, 0.0, 0.05, 0.0, 0.05),
        # the window is over: no more attempts, the job fails
        (7, 8.0, 8, 0.0, None),
        (3, 9.5, 8, 0.0, None),  # a write that timed out past the window
        (1, 0.0, 0, 0.0, None),  # DB_RETRY_WINDOW=0: never retried
    ],
)
def test_backoff(retry: int, elapsed: float, window: float, draw: float, expected: float | None) -> None:
    wait = backoff(retry, elapsed, window, draw)
    if expected is None:
        assert wait is None
    else:
        assert wait == pytest.approx(expected)


@pytest.mark.parametrize("window", [0.5, 1, 2.5, 8, 30, 3600])
@pytest.mark.parametrize("draw", [0.0, 0.37, 0.999])
def test_no_attempt_starts_after_the_window_and_the_last_one_starts_as_it_ends(
    window: float, draw: float
) -> None:
    """Attempts that fail at once, as against a refused connection: the schedule they follow."""
    starts, elapsed, retry = [0.0], 0.0, 1
    while (wait := backoff(retry, elapsed, window, draw)) is not None:
        assert 0 < wait <= LONGEST
        elapsed += wait
        starts.append(elapsed)
        retry += 1
    assert starts[-1] == pytest.approx(window)
    assert all(start <= window + 1e-9 for start in starts)
