"""The soak on a real federation on loopback (``bench/soak.py --transport loopback``).

``deploy/federation.sh`` starts a SuperLink and ``--nodes`` SuperNodes with their SuperExecs on
127.0.0.1 (``--mode``, default tls-auth: SuperNodes authenticated by key, so a restarted node
keeps its users). The FAB is this project with its ClientApp component pointed at
``harness.hostile_app:app``: the real ClientApp, whose replies a node attacks only when its
node config says so (``hostile-rate``). The rounds run as consecutive ``flwr run``s of one
named run (``--restart-every`` rounds each, so the ServerApp restarts from its checkpoint
between them), in both runs:

* **honest**: the same federation, every node's ``hostile-rate`` 0;
* **hostile**: the chosen nodes attack at ``--attack-rate``; the ServerApp process is
  SIGKILLed ``--kills`` times mid-round (the ``flwr run`` fails and is run again: it
  resumes from the checkpoint) and an honest SuperNode is SIGKILLed ``--node-kills`` times
  and started again (same key).

Consent churn (honest users sharing more / withdrawing, written to the nodes' ledgers under
their lock, as the CLI does) happens while the federation runs, after each of the first
``rounds - 2`` rounds (so every request can be answered before the end). The server's
checkpoint is checked for poison after every ``flwr run``; the final NDCG@20 is the last
round's evaluation, in which hostile nodes answer honestly (``hostile-spare-round``).
"""

from __future__ import annotations

import json
import math
import os
import random
import threading
import time
from pathlib import Path

import numpy as np

from bench.soak_checks import attack_table, churn, consent_check, poisoned, reasons
from common.config import RunConfig
from harness.federation import Federation, stage_app
from harness.hostile import Applied
from harness.hostile_app import ATTACK_LOG
from server_app.records import RoundRecord
from server_app.state import ServerState

RUN_NAME = "soak"
MAX_FAILED_RUNS = 3   # `flwr run`s of one segment that fail without an injected kill


def segment_ends(rounds: int, every: int) -> list[int]:
    ends = list(range(every, rounds, every)) if every else []
    return ends + [rounds]


def _overrides(args, end: int, fingerprint: str) -> str:
    """The run config of a ``flwr run`` up to round ``end``; ``data-fingerprint`` set as
    README.md advises for deployments (else the first share fixes the catalog, and a
    hostile first node can fix a forged one that every honest node is then refused against)."""
    return (f"dataset=\"{args.dataset}\" max-users={args.max_users} seed={args.seed} "
            f"data-fingerprint=\"{fingerprint}\" "
            f"num-rounds={end} fraction-train=1.0 eval-every={args.eval_every} "
            f"round-timeout={args.round_timeout} unshare-poll-every=1 run-name=\"{RUN_NAME}\" "
            + " ".join(f"{k}={v}" for k, v in _extra_config(args).items()))


def _extra_config(args) -> dict[str, str]:
    return dict(kv.split("=", 1) for kv in args.run_config.split(",") if kv)


def _node_extra(args, hostile: set[int], catalog: tuple[int, int]) -> dict[int, str]:
    return {pid: (f"hostile-rate={args.attack_rate} hostile-seed={args.seed} "
                  f"hostile-users={catalog[0]} hostile-items={catalog[1]} "
                  f"hostile-spare-round={args.rounds}") for pid in sorted(hostile)}


def _records(fed: Federation) -> list[RoundRecord]:
    files = list(fed.out_dir.glob(f"fedshare-*-{RUN_NAME}.json"))
    if not files:
        return []
    try:
        return [RoundRecord.from_dict(r) for r in json.loads(files[0].read_text())["rounds"]]
    except (OSError, ValueError, KeyError):   # written atomically; only a partial read races
        return []


def _result(fed: Federation) -> dict:
    return json.loads(next(fed.out_dir.glob(f"fedshare-*-{RUN_NAME}.json")).read_text())


def _applied(node_dirs: list[Path]) -> list[Applied]:
    """The attacks the hostile nodes logged, once each: a round re-run after a ServerApp kill
    sends the same message again and the node, drawing from the same seed, repeats the attack."""
    seen: dict[tuple, Applied] = {}
    for node_dir in node_dirs:
        log = node_dir / ATTACK_LOG
        if log.exists():
            for line in log.read_text().splitlines():
                entry = json.loads(line)
                seen.setdefault(tuple(sorted(entry.items())), Applied(**entry))
    return list(seen.values())


class Events:
    """What the hostile run injects after which round, and what the watcher saw."""

    def __init__(self, args, honest: list[int], hostile_run: bool):
        rng = np.random.default_rng([args.seed, 11])
        ends = segment_ends(args.rounds, args.restart_every)
        spread = np.array([r for r in range(1, args.rounds - 2) if r not in ends])
        kills = args.kills if hostile_run else 0
        self.server_kills = set(rng.choice(spread, min(kills, len(spread)), replace=False).tolist())
        self.node_kills = {int(r): honest[i % len(honest)] for i, r in enumerate(
            rng.choice(spread, min(args.node_kills if hostile_run else 0, len(spread)),
                       replace=False)) if honest}
        self.log: list[str] = []
        self.restarts: list[threading.Thread] = []


def _watch(fed: Federation, proc, events: Events, state: dict, args, honest, rng) -> bool:
    """Until ``proc`` (a ``flwr run``) exits: churn and injected kills after each new round.
    Returns whether the ServerApp was killed during it."""
    killed = False
    while proc.poll() is None:
        time.sleep(1)
        done = len(_records(fed))
        while state["seen"] < done:
            state["seen"] += 1
            rnd = state["seen"]
            if rnd <= args.rounds - 2:
                state["changes"] += churn(state["node_dirs"], honest, rng, args.churn_rate)
            if rnd in events.node_kills:
                pid = events.node_kills.pop(rnd)
                fed.kill_node(pid)
                events.log.append(f"after round {rnd}: SIGKILL SuperNode {pid}")
                thread = threading.Thread(target=lambda p=pid: events.log.append(
                    f"SuperNode {p} started again after {fed.start_node(p):.0f} s"))
                thread.start()
                events.restarts.append(thread)
            if rnd in events.server_kills:
                events.server_kills.discard(rnd)
                time.sleep(random.Random(rnd).uniform(2, 10))   # somewhere in the next round
                victims = fed.serverapp_pids()
                for pid in victims:
                    os.kill(pid, 9)
                killed = killed or bool(victims)
                events.log.append(f"round {rnd + 1}: SIGKILL ServerApp {victims}")
    return killed


def run_loopback(args, cfg: RunConfig, workdir: Path, hostile: set[int],
                 catalog: tuple[int, int, str], app_dir: Path) -> dict:
    extra = _node_extra(args, hostile, catalog)
    fed = Federation(workdir, args.nodes, args.mode, extra, app_dir)
    honest = [pid for pid in range(args.nodes) if pid not in hostile]
    rng = np.random.default_rng(args.seed)
    events = Events(args, honest, bool(hostile))
    node_dirs = [fed.run_dir / "state" / f"node-{i}" for i in range(args.nodes)]
    state = {"seen": 0, "changes": 0, "node_dirs": node_dirs}
    crashes, kills, runs, poisoned_checks = [], 0, 0, 0
    server_dir = fed.run_dir / "state" / "server" / RUN_NAME
    start = time.perf_counter()
    fed.start()
    try:
        for end in segment_ends(args.rounds, args.restart_every):
            failures = 0
            while len(_records(fed)) < end:
                proc = fed.run(_overrides(args, end, catalog[2]))
                killed = _watch(fed, proc, events, state, args, honest, rng)
                runs += 1
                if proc.returncode == 0:
                    continue
                if killed:
                    kills += 1
                else:
                    crashes.append(f"flwr run to round {end} exited {proc.returncode}: "
                                   + fed.run_log_tail())
                    failures += 1
                    if failures >= MAX_FAILED_RUNS:
                        raise RuntimeError(f"soak aborted: {crashes[-3:]}")
            poisoned_checks += poisoned(ServerState.load(cfg, server_dir))
        for thread in events.restarts:
            thread.join()
        result = _result(fed)
        final_state = ServerState.load(cfg, server_dir)
    finally:
        stopped = fed.stop()
        events.log.append(stopped.stdout.strip().splitlines()[-1] if stopped.stdout.strip() else "")
    records = [RoundRecord.from_dict(r) for r in result["rounds"]]
    return {"records": records, "result": result, "crashes": crashes, "kills": kills,
            "flwr_runs": runs, "poisoned_checkpoints": poisoned_checks,
            "nonfinite_loss_rounds": sum(not math.isfinite(r.train_loss) for r in records
                                         if not r.skipped),
            "consent_changes": state["changes"], "events": events.log,
            "seconds": time.perf_counter() - start, "applied": _applied(node_dirs),
            "consent": consent_check(final_state, node_dirs)}


def soak_loopback(args, cfg: RunConfig, tmp: Path) -> tuple[list[dict], dict]:
    """Both runs on loopback; the rows of the summary table and the JSON result."""
    data = cfg.load_data()
    catalog = (data.num_users, data.num_items, data.fingerprint)
    count = max(1, round(args.hostile_fraction * args.nodes)) if args.hostile_fraction > 0 else 0
    hostile = set((np.random.default_rng([args.seed, 7]).choice(
        np.arange(1, args.nodes + 1), count, replace=False) - 1).tolist())
    app_dir = stage_app(tmp / "app", "harness.hostile_app:app")
    rows, result = [], {"hostile_partitions": sorted(hostile), "transport": "loopback"}
    for name, nodes in (("honest", set()), ("hostile", hostile)):
        out = run_loopback(args, cfg, tmp / name, nodes, catalog, app_dir)
        records, final = out["records"], out["result"]
        best = final.get("best", {}).get("test", {})
        row = {"run": name, "rounds": len([r for r in records if not r.skipped]),
               "server_crashes": len(out["crashes"]), "kills": out["kills"],
               "flwr_runs": out["flwr_runs"], "poisoned_checkpoints": out["poisoned_checkpoints"],
               "nonfinite_loss_rounds": out["nonfinite_loss_rounds"],
               "consent_changes": out["consent_changes"], "seconds": round(out["seconds"], 1),
               "s_per_round": round(float(np.mean([r.seconds for r in records])), 1),
               "ndcg@20_final": final["final"].get("ndcg@20", float("nan")),
               "ndcg@20_best_valid": best.get("ndcg@20", float("nan")), **out["consent"]}
        rows.append(row)
        result[name] = {**row, "crashes": out["crashes"], "events": out["events"],
                        "final_num_users": final["final"].get("num-users"),
                        "reasons": reasons(records),
                        "attacks": attack_table(out["applied"], records)}
    return rows, result
