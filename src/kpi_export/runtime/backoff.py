"""The waits between attempts at the audit write inside a job, within DB_RETRY_WINDOW.

Pure: numbers in, a number out. Exponential with jitter (0.1 s, 0.2 s, 0.4 s … plus up to 1 s, at most 5 s),
counted from the start of the job's first attempt. No attempt starts after the window: the wait before the last
one is cut so that it starts as the window ends. An attempt in flight is bounded by DB_WRITE_TIMEOUT on its own
(a write shared by concurrent jobs cannot be cut for one of them), so a job's attempt lasts at most the window
plus one write.
"""

from __future__ import annotations

FIRST = 0.1  # seconds before the first retry, without jitter
LONGEST = 5.0  # no wait is longer, jitter included
JITTER = 1.0  # at most this is added to a wait: jobs hit by one fault do not all retry together
_DOUBLINGS = 16  # past this every wait is LONGEST; the bound keeps 2.0 ** n finite


def backoff(retry: int, elapsed: float, window: float, draw: float) -> float | None:
    """Seconds to wait before retry number `retry` (1 for the first), `elapsed` seconds after the first attempt
    started; None when the window is over and the job fails. `draw`, in [0, 1), picks the jitter."""
    remaining = window - elapsed
    if remaining <= 0:
        return None
    wait = min(FIRST * 2.0 ** min(retry - 1, _DOUBLINGS) + JITTER * draw, LONGEST)
    return min(wait, remaining)
