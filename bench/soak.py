"""Soak: a federation of honest and hostile nodes, with consent churn and server kills.

    python bench/soak.py --dataset ml-100k --nodes 20 --hostile-fraction 0.1 --rounds 30 \\
        --out bench/out/soak-ml-100k.json

Two runs with the same seed, config and consent churn (honest users sharing more and
withdrawing at random, through their ledgers as the CLI does):

* **honest**: every node honest;
* **hostile**: ``--hostile-fraction`` of the nodes alter each reply with probability
  ``--attack-rate`` by an attack drawn from ``harness.hostile.ATTACKS`` (non-finite,
  overflowing and out-of-range values, inflated claims, forged catalogs, claims on other
  nodes' users, unshare floods, wrong types); and the ServerApp is killed ``--kills`` times
  mid-round (an exception at a random message push, as a crash would leave it) and
  restarted from its checkpoint, plus a clean restart every ``--restart-every`` rounds.

Reported: rounds completed, server crashes (an exception that was not an injected kill),
poisoned rounds (a non-finite or exploding item table or graph model after a round), every
attack applied and whether the reply was rejected with a message naming the node, the
rejections by reason, final and best-validation NDCG@20 of both runs, and the consent
check: every request the server acknowledged (``done``) is absent from the edge store, and
none is lost. ``--transport inprocess`` (default; harness/inprocess.py: the real strategy
and ClientApp, messages serialised both ways) or ``--transport loopback``: a real SuperLink
and SuperNodes on 127.0.0.1, hostile SuperNodes, ServerApp and SuperNode SIGKILLs
(bench/soak_loopback.py, which says how it differs).

    python bench/soak.py --transport loopback --nodes 10 --hostile-fraction 0.1 --rounds 10 \\
        --restart-every 5 --eval-every 5 --kills 2 --round-timeout 120 --out bench/out/soak-loopback.json
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from bench.common_args import print_table, write_json  # noqa: E402
from bench.soak_checks import (attack_table, churn, consent_check, poisoned,  # noqa: E402
                               reasons)
from common.config import load_config  # noqa: E402
from common.manifest import run_manifest  # noqa: E402
from harness.hostile import HostileGrid  # noqa: E402
from harness.inprocess import InProcessGrid  # noqa: E402
from harness.session import Session, new_session, restart  # noqa: E402
from server_app.exchange import selection  # noqa: E402



class Kill(RuntimeError):
    """An injected ServerApp crash."""


def arm_kill(grid: HostileGrid, rng: np.random.Generator) -> None:
    """The ServerApp dies at a random one of the round's first pushes."""
    countdown = [int(rng.integers(1, 5))]
    push = grid.push_messages

    def dying_push(messages):
        countdown[0] -= 1
        if countdown[0] == 0:
            raise Kill("injected ServerApp kill")
        return push(messages)
    grid.push_messages = dying_push


def _grid_type(args, hostile: set[int], shared: dict, catalog: tuple[int, int]):
    """New grids (after a restart) continue the attack log and random stream."""
    def make(run_config, num_nodes, node_state_dirs=None):
        grid = HostileGrid(run_config, num_nodes, node_state_dirs, hostile=hostile,
                           rate=args.attack_rate, seed=args.seed, catalog=catalog)
        if shared:
            grid.rng, grid.applied = shared["rng"], shared["applied"]
        shared.update(rng=grid.rng, applied=grid.applied)
        return grid
    return make


def run(args, cfg, workdir: Path, hostile: set[int]) -> dict:
    shared: dict = {}
    data = cfg.load_data()
    make = _grid_type(args, hostile, shared, (data.num_users, data.num_items))
    session = new_session(cfg, args.nodes, workdir, grid_type=make)
    honest = [pid for pid in range(args.nodes) if pid + 1 not in hostile]
    rng = np.random.default_rng(args.seed)
    kill_rounds = set(rng.choice(np.arange(2, args.rounds), args.kills, replace=False).tolist()) \
        if hostile and args.kills else set()
    crashes, kills, poisoned_rounds, restarts, changes = [], 0, 0, 0, 0
    start = time.perf_counter()
    while session.next_round <= args.rounds:
        rnd = session.next_round
        if rnd > 1:
            changes += churn(session.node_dirs(), honest, rng, args.churn_rate)
        if rnd in kill_rounds:
            kill_rounds.discard(rnd)
            arm_kill(session.grid, rng)
        try:
            session.run_rounds(1)
        except Kill:
            kills += 1
        except Exception as exc:  # a crash the soak is looking for
            crashes.append(f"round {rnd}: {type(exc).__name__}: {exc}"[:300])
        poisoned_rounds += poisoned(session.state)
        restart_due = hostile and args.restart_every and rnd % args.restart_every == 0
        if session.next_round == rnd or restart_due:     # killed or crashed: from disk
            session = restart(session, grid_type=make)
            restarts += 1
    return {"session": session, "crashes": crashes, "kills": kills, "restarts": restarts,
            "poisoned_rounds": poisoned_rounds, "consent_changes": changes,
            "seconds": time.perf_counter() - start, "applied": shared.get("applied", [])}


def quality(session: Session) -> dict:
    """Test NDCG@20 of the final models, evaluated by every node answering honestly (the
    measurement is not part of the attack), and at the best validation round."""
    chosen = selection(session.state.history)
    final = restart(session, grid_type=InProcessGrid).evaluate()
    best = chosen.best_test or {}
    return {"ndcg@20_final": final.get("ndcg@20", float("nan")),
            "ndcg@20_best_valid": best.get("ndcg@20", float("nan")), "best_round": chosen.best_step}


def soak_inprocess(args, cfg, tmp: Path) -> tuple[list[dict], dict]:
    count = max(1, round(args.hostile_fraction * args.nodes)) if args.hostile_fraction > 0 else 0
    hostile = set(np.random.default_rng([args.seed, 7]).choice(
        np.arange(1, args.nodes + 1), count, replace=False).tolist())
    rows, result = [], {"hostile_nodes": sorted(hostile), "transport": "inprocess"}
    for name, nodes in (("honest", set()), ("hostile", hostile)):
        out = run(args, cfg, tmp / name, nodes)
        session = out.pop("session")
        row = {"run": name, "rounds": len(session.state.history),
               "server_crashes": len(out["crashes"]), "kills": out["kills"],
               "restarts": out["restarts"], "poisoned_rounds": out["poisoned_rounds"],
               "consent_changes": out["consent_changes"], "seconds": round(out["seconds"], 1),
               **quality(session), **consent_check(session.state, session.node_dirs())}
        rows.append(row)
        result[name] = {**row, "crashes": out["crashes"], "reasons": reasons(session.state.history),
                        "attacks": attack_table(out["applied"], session.state.history)}
    return rows, result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transport", choices=("inprocess", "loopback"), default="inprocess",
                        help="loopback: a real SuperLink + SuperNodes (bench/soak_loopback.py)")
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--hostile-fraction", type=float, default=0.1)
    parser.add_argument("--attack-rate", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--kills", type=int, default=3, help="ServerApp kills (hostile run)")
    parser.add_argument("--node-kills", type=int, default=1,
                        help="loopback: SuperNode SIGKILLs + restarts (hostile run)")
    parser.add_argument("--restart-every", type=int, default=7)
    parser.add_argument("--churn-rate", type=float, default=0.3)
    parser.add_argument("--max-users", type=int, default=0)
    parser.add_argument("--eval-every", type=int, default=5)
    parser.add_argument("--round-timeout", type=float, default=60.0)
    parser.add_argument("--mode", choices=("insecure", "tls", "tls-auth"), default="tls-auth",
                        help="loopback: deploy/federation.sh --mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run-config", default="", help="extra k=v,k=v run config")
    parser.add_argument("--out", default="bench/out/soak.json")
    args = parser.parse_args(argv)
    if args.kills > max(args.rounds - 2, 0):
        parser.error(f"--kills {args.kills}: at most --rounds - 2 = {max(args.rounds - 2, 0)} "
                     "(a ServerApp is killed in distinct rounds from round 2 on, not the last)")
    overrides = dict(kv.split("=", 1) for kv in args.run_config.split(",") if kv)
    cfg = load_config({"dataset": args.dataset, "max-users": args.max_users, "seed": args.seed,
                       "num-rounds": args.rounds, "fraction-train": 1.0,
                       "eval-every": args.eval_every, "round-timeout": args.round_timeout,
                       "unshare-poll-every": 1,
                       "upload-mode": "rows",   # honest rows for the train attacks to tamper with
                       **overrides})
    with tempfile.TemporaryDirectory() as tmp:
        if args.transport == "loopback":
            from bench.soak_loopback import soak_loopback
            rows, result = soak_loopback(args, cfg, Path(tmp))
        else:
            rows, result = soak_inprocess(args, cfg, Path(tmp))
    result = {"manifest": run_manifest(cfg.as_dict(), args.seed, cfg.data_fingerprint()),
              "args": vars(args), **result}
    honest_ndcg = rows[0]["ndcg@20_final"]
    result["ndcg_ratio_final"] = rows[1]["ndcg@20_final"] / honest_ndcg if honest_ndcg else float("nan")
    print_table(rows, list(rows[0]))
    print_table(result["hostile"]["attacks"], ["attack", "applied", "rejected", "example"])
    for line in result["hostile"].get("events", []):
        print(line)
    print(f"hostile/honest final NDCG@20: {result['ndcg_ratio_final']:.4f}")
    write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
