"""FedShare ServerApp: reads the run config once and drives :class:`FedShareStrategy`."""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path

import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp

from common.atomic import atomic_write_json
from common.config import RunConfig, load_config
from common.manifest import run_manifest
from server_app import checkpoint
from server_app.state import ServerState
from server_app.strategy import FedShareStrategy, Tap

log = logging.getLogger("flwr.fedshare")
app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    run_fedshare(grid, load_config(context.run_config), run_id=context.run_id)


def wait_for_nodes(grid: Grid, min_nodes: int, timeout: float) -> list[int]:
    """Block until ``min_nodes`` SuperNodes are connected (or fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while len(nodes := list(grid.get_node_ids())) < min_nodes:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {len(nodes)} of min-nodes={min_nodes} nodes connected "
                               f"after {timeout:.0f}s")
        time.sleep(1.0)
    return nodes


def run_label(cfg: RunConfig, run_id: int) -> str:
    """Name of the run's server state folder and result file."""
    return cfg.run_name or f"run-{run_id}"


def result_path(cfg: RunConfig, run_id: int) -> Path:
    return Path(cfg.out_dir) / \
        f"fedshare-{cfg.dataset}-rho{cfg.sharing_ratio:g}-{run_label(cfg, run_id)}.json"


def _progress(record: dict, num_rounds: int) -> str:
    phases = record.get("phases", {})
    up = sum(p.get("bytes_up", 0) for p in phases.values())
    down = sum(p.get("bytes_down", 0) for p in phases.values())
    text = (f"round {record['round']}/{num_rounds} | loss {record.get('train_loss', float('nan')):.4f}"
            f" | server loss {record.get('server_loss', 0.0):.4f} | shared edges "
            f"{record.get('shared_edges', 0)} | up {up / 1e6:.2f} MB down {down / 1e6:.2f} MB"
            f" | {record['seconds']:.1f}s")
    metrics = record.get("metrics")
    if metrics:
        text += " | " + " ".join(f"{k} {v:.4f}" for k, v in metrics.items() if k != "num-users")
    return text


def run_fedshare(grid: Grid, cfg: RunConfig, run_id: int = 0, tap: Tap | None = None) -> dict:
    """Run (or resume) all rounds; writes and returns ``{"manifest", "rounds", "final"}``.

    The server state is checkpointed atomically after every round; a run started again with
    the same ``run-name`` continues after the last checkpointed round."""
    torch.set_num_threads(cfg.torch_threads)  # shares the cores with the ClientApps
    state = ServerState(cfg, Path(cfg.state_dir) / "server" / run_label(cfg, run_id))
    if (state.state_dir / checkpoint.CHECKPOINT_FILE).exists():
        checkpoint.load(state, state.state_dir / checkpoint.CHECKPOINT_FILE)
        log.info("resuming %s after round %d", state.state_dir, state.round)
    strategy = FedShareStrategy(cfg, state, tap)
    nodes = wait_for_nodes(grid, cfg.min_nodes, cfg.round_timeout)
    log.info("FedShare: %d nodes connected, %d rounds, sharing-ratio %g", len(nodes),
             cfg.num_rounds, cfg.sharing_ratio)
    out, started = result_path(cfg, run_id), time.perf_counter()
    result = _result(cfg, state, time.perf_counter() - started)
    for rnd in range(state.round + 1, cfg.num_rounds + 1):
        round_start = time.perf_counter()
        record = strategy.run_round(grid, rnd)
        record["seconds"] = time.perf_counter() - round_start
        state.history.append(record)
        state.save()
        if not record.get("skipped"):
            log.info(_progress(record, cfg.num_rounds))
        for phase, stats in record.get("phases", {}).items():
            for reason in stats.get("rejected", []):
                log.warning("round %d %s: %s", rnd, phase, reason)
        result = _result(cfg, state, time.perf_counter() - started)
        atomic_write_json(out, result)
    log.info("FedShare finished: results in %s", out.resolve())
    return result


@lru_cache(maxsize=8)
def _manifest(cfg: RunConfig, fingerprint: str) -> dict:
    return run_manifest(cfg.as_dict(), cfg.seed, fingerprint)  # once per run (runs git)


def _result(cfg: RunConfig, state: ServerState, seconds: float) -> dict:
    history = state.history
    fingerprint = state.catalog.fingerprint if state.catalog else ""
    evaluated = [r for r in history if r.get("metrics")]
    return {
        "manifest": dict(_manifest(cfg, fingerprint)),
        "rounds": history,
        "final": evaluated[-1]["metrics"] if evaluated else {},
        "seconds": seconds,
        "server_state_dir": str(state.state_dir),
    }
