"""Where a deployed message's time goes, seen from the node (``FEDSHARE_TIMINGS=1``).

In a deployment Flower starts a fresh ``flwr-clientapp`` process for every message. With the
environment variable set, each handler appends one JSON line to ``<state-dir>/timings.jsonl``:
the message's creation on the server, this process's start, the end of this module's import
(Python, torch, flwr and the app), and the handler's start and end, all wall-clock seconds on
the same machine. ``bench/deployment.py`` turns them into the per-message breakdown of
docs/benchmarks.md ("Deployment latency"). Off by default: nothing is written.
"""

from __future__ import annotations

import json
import os
import time
from functools import wraps
from pathlib import Path
from typing import Callable

ENABLED = os.environ.get("FEDSHARE_TIMINGS") == "1"


def _process_started() -> float:
    """Wall-clock start of this process: its start in clock ticks since boot (Linux
    ``/proc/self/stat``, 10 ms resolution) against the boot clock now; the import time
    elsewhere."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
        return time.time() - age
    except (OSError, ValueError, IndexError, AttributeError):
        return time.time()


PROCESS_STARTED = _process_started() if ENABLED else 0.0


def timed(handler: Callable, state_dir_of: Callable, imported: Callable[[], float]) -> Callable:
    """``handler(msg, context)`` recording its timings when enabled (``state_dir_of(context)``
    names the folder; ``imported()`` when the app module finished importing)."""
    if not ENABLED:
        return handler

    @wraps(handler)
    def wrapper(msg, context):
        start = time.time()
        reply = handler(msg, context)
        entry = {"type": msg.metadata.message_type, "round": msg.metadata.group_id,
                 "created": msg.metadata.created_at, "process": PROCESS_STARTED,
                 "imported": imported(), "start": start, "end": time.time()}
        folder = Path(state_dir_of(context))
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "timings.jsonl", "a") as sink:
            sink.write(json.dumps(entry) + "\n")
        return reply
    return wrapper
