"""Flower's SuperNode with its three hard-coded waits shortened.

    python deploy/quick_supernode.py --insecure --superlink 127.0.0.1:9092 --isolation process ...

Takes ``flower-supernode``'s arguments, all of them, and runs Flower's own ``flower_supernode()``.
Flower 1.41's SuperNode loop (``flwr.supernode.start_client_internal``) waits for fixed times that
no option or environment variable changes (docs/benchmarks.md, "Deployment latency"):

* it sleeps **3 s after every pull that found no message**: a node that answered a round pulls
  again at once, finds nothing (the round is still open) and sleeps, so the next round's message
  waits 1.5 s on average before the node even sees it. Here: ``FEDSHARE_SUPERNODE_IDLE_POLL``
  seconds (default 0.25).
* it checks its own in-memory state **every 0.5 s** for the ClientApp's reply and for the reply's
  contents. Here: every 0.05 s (a local lookup, no network).
* its download of a message's objects **retries after 1 s, 2 s, 4 s ... up to 10 s**
  (``PULL_INITIAL_BACKOFF``, ``PULL_BACKOFF_CAP``) when the ServerApp has not finished pushing
  them. Here: after 0.05 s doubling to 0.5 s, for as long as Flower lets a pull take in all
  (``PULL_MAX_TIME``, 2 h; no per-object count of tries, which at 0.5 s would give up sooner).

The cost is idle traffic: a node with nothing to do asks the SuperLink for a message every 0.25 s
instead of every 3 s (one small gRPC call; 12x the idle pulls). Raise the idle poll for fleets of
thousands of nodes. Everything else, including the message flow, TLS, authentication and the
SuperExec it starts, is Flower's unchanged.

The waits are found by their values in Flower's source. If a Flower upgrade changes them, this
launcher logs a warning and runs the SuperNode unchanged rather than guess
(tests/deploy/test_quick_supernode.py pins the values of flwr 1.41.0).
"""

from __future__ import annotations

import inspect
import logging
import os
import re
import sys
import time

IDLE_POLL_ENV = "FEDSHARE_SUPERNODE_IDLE_POLL"
DEFAULT_IDLE_POLL = 0.25
LOCAL_POLL = 0.05  # the reply and its contents: a lookup in the node's own state
PULL_BACKOFF = {"initial_backoff": 0.05, "backoff_cap": 0.5, "max_tries_per_object": None}
# Flower 1.41's literal waits in start_client_internal: after an empty pull, and the local polls.
FLOWER_IDLE_SLEEP = 3.0
FLOWER_LOCAL_SLEEP = 0.5


class ShortWaits:
    """Stands in for the ``time`` module inside Flower's SuperNode loop: ``sleep`` maps Flower's
    fixed waits (keys of ``waits``) to shorter ones; every other name is ``time``'s own."""

    def __init__(self, waits: dict[float, float]) -> None:
        self.waits = waits

    def sleep(self, seconds: float) -> None:
        time.sleep(self.waits.get(float(seconds), seconds))

    def __getattr__(self, name: str):
        return getattr(time, name)


def idle_poll_seconds(environ=os.environ) -> float:
    """``FEDSHARE_SUPERNODE_IDLE_POLL`` as seconds (0 < s <= 3); a bad value is an error."""
    text = environ.get(IDLE_POLL_ENV, "").strip()
    if not text:
        return DEFAULT_IDLE_POLL
    try:
        seconds = float(text)
    except ValueError:
        raise ValueError(f"{IDLE_POLL_ENV}={text!r} is not a number of seconds") from None
    if not 0 < seconds <= FLOWER_IDLE_SLEEP:
        raise ValueError(f"{IDLE_POLL_ENV}={text!r} must be > 0 and <= {FLOWER_IDLE_SLEEP:g}"
                         " (Flower's own idle sleep)")
    return seconds


def flower_sleeps(module) -> set[float]:
    """The literal ``time.sleep(N)`` calls in ``module``'s source, as numbers."""
    return {float(n) for n in re.findall(r"\btime\.sleep\(\s*([0-9.]+)\s*\)",
                                         inspect.getsource(module))}


def shorten_waits(idle_poll: float, loop=None) -> bool:
    """Shorten the fixed waits of the SuperNode loop (``loop``: Flower's
    ``start_client_internal`` module) in this process; False, and nothing changed, when the
    loop does not have exactly the waits this was written for."""
    if loop is None:
        from flwr.supernode import start_client_internal as loop

    found = flower_sleeps(loop)
    if found != {FLOWER_IDLE_SLEEP, FLOWER_LOCAL_SLEEP} or not hasattr(loop, "pull_objects"):
        logging.getLogger(__name__).warning(
            "quick_supernode: Flower's SuperNode loop waits %s s, not the %g / %g s of flwr "
            "1.41.0; running it unchanged", sorted(found), FLOWER_IDLE_SLEEP, FLOWER_LOCAL_SLEEP)
        return False
    loop.time = ShortWaits({FLOWER_IDLE_SLEEP: idle_poll, FLOWER_LOCAL_SLEEP: LOCAL_POLL})
    loop.pull_objects.__kwdefaults__.update(PULL_BACKOFF)
    return True


def main() -> None:
    try:
        idle_poll = idle_poll_seconds()
    except ValueError as err:
        sys.exit(f"quick_supernode: {err}")
    from flwr.supercore import log
    from flwr.supernode.cli import flower_supernode

    if shorten_waits(idle_poll):
        log(logging.INFO, "quick_supernode: idle poll %g s, local polls %g s, object retries "
            "%g-%g s (Flower: 3 / 0.5 / 1-10 s)", idle_poll, LOCAL_POLL,
            PULL_BACKOFF["initial_backoff"], PULL_BACKOFF["backoff_cap"])
    sys.argv[0] = "flower-supernode"
    flower_supernode()


if __name__ == "__main__":
    main()
