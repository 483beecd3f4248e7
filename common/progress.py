"""Progress of long work: tqdm bars and time-left estimates, one convention for all of them.

Bars go to stderr and are drawn only on a terminal, so logs, pipes and CI output get none (the
per-step lines a command prints still go to stdout). ``FEDSHARE_PROGRESS=1`` draws them
anyway, ``FEDSHARE_PROGRESS=0`` never. Lines printed while a bar is drawn go through
:func:`write` (or :func:`redirect_logging` for loggers) so they scroll above the bar instead of
tearing it.
"""

from __future__ import annotations

import logging
import os
import statistics
from contextlib import contextmanager
from typing import Iterator, Sequence

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

ENV = "FEDSHARE_PROGRESS"


def _disabled(enabled: bool) -> bool | None:
    """tqdm's ``disable``: True hides the bar, None hides it unless stderr is a terminal."""
    forced = os.environ.get(ENV, "").strip()
    if not enabled or forced == "0":
        return True
    return False if forced == "1" else None


def bar(total: float | None, desc: str, *, enabled: bool = True, unit: str = "it",
        leave: bool | None = True, **options) -> tqdm:
    """A progress bar of ``total`` steps (None: unknown) labelled ``desc``; use it as a
    context manager and call ``update``. ``options`` go to tqdm (e.g. ``unit_scale``)."""
    return tqdm(total=total, desc=desc, unit=unit, leave=leave, disable=_disabled(enabled),
                dynamic_ncols=True, **options)


def write(line: str) -> None:
    """Print ``line`` to stdout above any bar that is being drawn."""
    tqdm.write(line)


def above_bars():
    """A context in which plain ``print`` output scrolls above the bars being drawn."""
    return tqdm.external_write_mode()


@contextmanager
def redirect_logging(*names: str) -> Iterator[None]:
    """Console handlers of the named loggers write above the bars while this is open."""
    with logging_redirect_tqdm(loggers=[logging.getLogger(name) for name in names]):
        yield


def median_of_last(values: Sequence[float], most: int = 5) -> float | None:
    """The median of the last ``most`` values: recent steps predict the next ones best, and
    one slow step (the first, with its start-up) does not sway it."""
    recent = list(values)[-most:]
    return statistics.median(recent) if recent else None


def format_seconds(seconds: float) -> str:
    """``45s``, ``3m05s``, ``2h07m``: short, for log lines."""
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
