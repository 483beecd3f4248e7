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
from common.progress import format_seconds, median_of_last
from server_app.records import RoundRecord
from server_app.state import ServerState
from server_app.exchange import selection
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


def _progress(record: RoundRecord, cfg: RunConfig, history: list[RoundRecord]) -> str:
    up = sum(p.bytes_up for p in record.phases.values())
    down = sum(p.bytes_down for p in record.phases.values())
    text = (f"round {record.round}/{cfg.num_rounds} | loss {record.train_loss:.4f}"
            f" | server loss {record.server_loss:.4f} | shared edges {record.shared_edges}"
            f" | up {up / 1e6:.2f} MB down {down / 1e6:.2f} MB | {record.seconds:.1f}s")
    if record.metrics:
        text += " | test " + " ".join(f"{k} {v:.4f}" for k, v in record.metrics.items()
                                      if k != "num-users")
    if record.valid_metrics.get("num-users"):
        text += f" | valid ndcg@20 {record.valid_metrics['ndcg@20']:.4f}"
    return text + _time_left(record.round, cfg, history)


def _time_left(rnd: int, cfg: RunConfig, history: list[RoundRecord]) -> str:
    """`` | ~3m05s left``: the rounds after ``rnd`` at the recent (median) round time without
    evaluation, plus the evaluations still due at the recent evaluation time (``≥``
    while none was measured yet); ``patience`` may stop the run sooner."""
    left = range(rnd + 1, cfg.num_rounds + 1)
    done = [r for r in history if not r.skipped]
    if not left or not done:
        return ""
    evals = [r.phases["evaluate"].seconds for r in done if "evaluate" in r.phases]
    plain = median_of_last([r.seconds - r.phases["evaluate"].seconds if "evaluate" in r.phases
                            else r.seconds for r in done])
    evals_left = sum(cfg.evaluates(k) for k in left)
    seconds = len(left) * plain + evals_left * (median_of_last(evals) or 0.0)
    return f" | {'≥' if evals_left and not evals else '~'}{format_seconds(seconds)} left"


def run_fedshare(grid: Grid, cfg: RunConfig, run_id: int = 0, tap: Tap | None = None) -> dict:
    """Run (or resume) all rounds; writes and returns ``{"manifest", "rounds", "final"}``.

    The server state is saved atomically after every round; a run started again with the
    same ``run-name`` continues after the last saved round."""
    torch.set_num_threads(cfg.torch_threads)  # shares the cores with the ClientApps
    state = ServerState.load(cfg, Path(cfg.state_dir) / "server" / run_label(cfg, run_id))
    if state.round:
        log.info("resuming %s after round %d", state.state_dir, state.round)
    strategy = FedShareStrategy(cfg, state, tap)
    nodes = wait_for_nodes(grid, cfg.min_nodes, cfg.round_timeout)
    log.info("FedShare: %d nodes connected, %d rounds, sharing-ratio %g", len(nodes),
             cfg.num_rounds, cfg.sharing_ratio)
    out, started = result_path(cfg, run_id), time.perf_counter()

    def report(record: RoundRecord) -> None:
        if not record.skipped:
            log.info(_progress(record, cfg, state.history))
        for phase, stats in record.phases.items():
            for reason in stats.rejected:
                log.warning("round %d %s: %s", record.round, phase, reason)
        atomic_write_json(out, _result(cfg, state, time.perf_counter() - started))

    strategy.run(grid, range(state.round + 1, cfg.num_rounds + 1), report)
    if state.catalog is None:  # no node could load its data: fail the run, say why
        raise RuntimeError("every round was skipped: no node reported its data catalog; "
                           f"node errors: {_node_errors(state)}")
    log.info("FedShare finished: results in %s", out.resolve())
    return _result(cfg, state, time.perf_counter() - started)


def _node_errors(state: ServerState, most: int = 5) -> list[str]:
    reasons = [reason for record in state.history for stats in record.phases.values()
               for reason in stats.rejected]
    return sorted(set(reasons))[:most]


@lru_cache(maxsize=8)
def _manifest(cfg: RunConfig, fingerprint: str) -> dict:
    return run_manifest(cfg.as_dict(), cfg.seed, fingerprint)  # once per run (runs git)


def _result(cfg: RunConfig, state: ServerState, seconds: float) -> dict:
    fingerprint = state.catalog.fingerprint if state.catalog else ""
    evaluated = [r for r in state.history if r.metrics]
    chosen = selection(state.history, cfg.patience)
    return {
        "manifest": dict(_manifest(cfg, fingerprint)),
        "rounds": [record.to_dict() for record in state.history],
        "final": evaluated[-1].metrics if evaluated else {},
        "best": {"round": chosen.best_step, "valid": dict(chosen.best_valid or {}),
                 "test": dict(chosen.best_test or {}), "selection": chosen.summary()},
        "seconds": seconds,
        "server_state_dir": str(state.state_dir),
    }
