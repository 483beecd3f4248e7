"""The server's LightGCN over the shared graph, with item-side contrastive alignment.

Server loss (docs/method.md §3.3):

    L_s = BPR(G_s) + reg * ||theta_batch||^2 + lambda_cl * InfoNCE(h_i, e_i; tau)

``h = LightGCN(Z, G_s)`` (He et al., SIGIR 2020) propagates the server table ``Z``
(``(U, d)`` users, ``(I, d)`` items) over the normalized shared graph; ``e_i`` are the
FedAvg-aggregated item rows from the clients (fixed targets), contrasted against
the other items of the batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from common.graph import Graph
from common.losses import bpr_loss, info_nce, l2_penalty
from common.models import lightgcn_item_layer_sum, lightgcn_propagate


@dataclass(frozen=True)
class EgoTables:
    """What a node needs to compute its users' LightGCN views over their *whole* history
    (``fusion = "ego"``, docs/design.md "Ego views"): ``items`` ``(I, d)`` the item-layer sum
    S (:func:`common.models.lightgcn_item_layer_sum`), zero for items with no shared edge
    (their layers hold nothing learned); ``degree`` ``(I,)`` item degrees in the shared graph;
    ``users`` ``(U, d)`` layer-0 user rows (a node receives only its sharing users' rows)."""

    items: torch.Tensor
    degree: torch.Tensor
    users: torch.Tensor


def mask_unseen(users: torch.Tensor, items: torch.Tensor,
                graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
    """Views with the rows of users and items that have no edge in ``graph`` set to zero."""
    degree = torch.bincount(graph.edge_index[0], minlength=graph.num_users + graph.num_items)
    return (users * (degree[: graph.num_users] > 0).unsqueeze(1),
            items * (degree[graph.num_users:] > 0).unsqueeze(1))


INIT_SCALE = 0.1   # layer-0 rows start as INIT_SCALE * N(0, 1)


@dataclass(frozen=True)
class ServerHyper:
    epochs: float
    batch_size: int
    lr: float
    reg: float
    cl_weight: float
    cl_temperature: float
    num_layers: int
    epoch_steps: int = 0   # at most this many steps per epoch (0: no limit)
    lr_scaling: str = "sqrt"   # how lr follows a grown batch: "sqrt" or "none"

    def batch_size_for(self, num_pairs: int) -> int:
        """``batch_size``, grown to ``ceil(num_pairs / epoch_steps)`` when an epoch over
        ``num_pairs`` shared edges would take more than ``epoch_steps`` steps. Every step
        propagates the whole graph (O(E + U + I)), so a step count that grew with E would make
        an epoch grow like E * (E + U + I); a bounded one keeps it linear (docs/scaling.md)."""
        if self.epoch_steps <= 0:
            return self.batch_size
        return max(self.batch_size, math.ceil(num_pairs / self.epoch_steps))

    def lr_for(self, batch_size: int) -> float:
        """``lr`` for steps of ``batch_size``: times sqrt(batch_size / self.batch_size) under
        "sqrt" scaling (fewer, larger Adam steps per epoch; measured in docs/scaling.md)."""
        if self.lr_scaling == "none":
            return self.lr
        if self.lr_scaling != "sqrt":
            raise ValueError(f"lr_scaling must be 'sqrt' or 'none', not {self.lr_scaling!r}")
        return self.lr * math.sqrt(batch_size / self.batch_size)


class ServerGraphModel:
    """Server embedding table ``Z`` and its optimizer state (explicit, checkpointable)."""

    def __init__(self, num_users: int, num_items: int, dim: int, hp: ServerHyper, seed: int):
        self.hp = hp
        self.generator = torch.Generator().manual_seed(seed)
        self.user_weight = (INIT_SCALE * torch.randn(num_users, dim, generator=self.generator)) \
            .requires_grad_(True)
        self.item_weight = (INIT_SCALE * torch.randn(num_items, dim, generator=self.generator)) \
            .requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.user_weight, self.item_weight], lr=hp.lr)
        # per row: the round since which its Adam moments accumulate (0 = since creation)
        self.moments_since = {"user": torch.zeros(num_users, dtype=torch.int64),
                              "item": torch.zeros(num_items, dtype=torch.int64)}

    def _batch_loss(self, graph: Graph, user_index, pos, neg, targets, extra) -> torch.Tensor:
        users, items = lightgcn_propagate(self.user_weight, self.item_weight, graph,
                                          self.hp.num_layers)
        u_vec = users[user_index]
        loss = bpr_loss((u_vec * items[pos]).sum(-1), (u_vec * items[neg]).sum(-1))
        loss = loss + self.hp.reg * l2_penalty(self.user_weight[user_index],
                                               self.item_weight[pos], self.item_weight[neg])
        if self.hp.cl_weight > 0 and targets is not None:
            batch_items = torch.unique(pos)
            loss = loss + self.hp.cl_weight * info_nce(items[batch_items], targets[batch_items],
                                                       None, self.hp.cl_temperature)
        if extra is not None:
            loss = loss + extra(users, items)
        return loss

    def train(self, graph: Graph, pairs: torch.Tensor, targets: torch.Tensor | None,
              extra: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
              steps: int | None = None, epochs: float | None = None) -> float:
        """Mini-batch BPR over the shared ``pairs`` ((E, 2) [user, item]): ``epochs``
        (default ``hp.epochs``) passes, or exactly ``steps`` batches when given.

        ``extra(users, items)`` adds a term computed from the propagated tables (unlearning)."""
        epochs = self.hp.epochs if epochs is None else epochs
        if len(pairs) == 0 or (steps is None and epochs <= 0) or steps == 0:
            return 0.0
        batch_size = self.hp.batch_size_for(len(pairs)) if steps is None else self.hp.batch_size
        num_samples = math.ceil(epochs * len(pairs)) if steps is None else steps * batch_size
        repeats = math.ceil(num_samples / len(pairs))
        order = torch.cat([torch.randperm(len(pairs), generator=self.generator)
                           for _ in range(repeats)])[:num_samples]
        num_items = self.item_weight.shape[0]
        for group in self.optimizer.param_groups:   # set per call: a step's lr follows its batch
            group["lr"] = self.hp.lr_for(batch_size)
        total, count = 0.0, 0
        for batch in order.split(batch_size):
            neg = torch.randint(num_items, (len(batch),), generator=self.generator)
            loss = self._batch_loss(graph, pairs[batch, 0], pairs[batch, 1], neg, targets, extra)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            total, count = total + loss.item(), count + 1
        return total / count

    def views(self, graph: Graph) -> tuple[torch.Tensor, torch.Tensor]:
        """Global views ``(h_u (U, d), h_i (I, d))``; rows of nodes with no shared edge are zero
        (nothing was learned for them, so they must not add noise to client scores)."""
        with torch.no_grad():
            users, items = lightgcn_propagate(self.user_weight, self.item_weight, graph,
                                              self.hp.num_layers)
        return mask_unseen(users, items, graph)

    def ego_tables(self, graph: Graph) -> EgoTables:
        degree = torch.bincount(graph.edge_index[0], minlength=graph.num_users + graph.num_items)
        item_degree = degree[graph.num_users:]
        with torch.no_grad():
            items = lightgcn_item_layer_sum(self.user_weight, self.item_weight, graph,
                                            self.hp.num_layers) * (item_degree > 0).unsqueeze(1)
            users = self.user_weight.detach() * (degree[: graph.num_users] > 0).unsqueeze(1)
        return EgoTables(items, item_degree, users.clone())

    def propagated(self, graph: Graph | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Unmasked propagated tables (what the model remembers), for forgetting metrics."""
        with torch.no_grad():
            if graph is None:
                return self.user_weight.detach().clone(), self.item_weight.detach().clone()
            return lightgcn_propagate(self.user_weight, self.item_weight, graph, self.hp.num_layers)

    def reinitialize_rows(self, users: torch.Tensor, items: torch.Tensor) -> None:
        """Fresh draws from the initial distribution for the given layer-0 rows (rows left
        without any edge: :func:`server_app.unlearning.isolated_nodes`)."""
        with torch.no_grad():
            for weight, rows in ((self.user_weight, users), (self.item_weight, items)):
                weight[rows] = INIT_SCALE * torch.randn(len(rows), weight.shape[1],
                                                        generator=self.generator)

    def reset_moments(self, users: torch.Tensor, items: torch.Tensor, rnd: int) -> None:
        """Zero the Adam moment estimates of the given rows (they carried gradients of
        withdrawn edges) and note the round since which these rows' moments accumulate."""
        for param, rows, kind in ((self.user_weight, users, "user"), (self.item_weight, items, "item")):
            for key in ("exp_avg", "exp_avg_sq"):
                moment = self.optimizer.state.get(param, {}).get(key)
                if moment is not None:
                    moment[rows] = 0.0
            self.moments_since[kind][rows] = rnd

    def reset_optimizer(self, rnd: int) -> None:
        """A fresh optimizer: every row's moments accumulate from round ``rnd`` on."""
        self.optimizer = torch.optim.Adam([self.user_weight, self.item_weight], lr=self.hp.lr)
        for since in self.moments_since.values():
            since.fill_(rnd)

    def set_tables(self, tables: dict[str, torch.Tensor]) -> None:
        """Overwrite ``Z`` with ``tables`` (a rollback or replay)."""
        with torch.no_grad():
            self.user_weight.copy_(tables["user"])
            self.item_weight.copy_(tables["item"])

    def state_dict(self) -> dict:
        return {"user": self.user_weight.detach(), "item": self.item_weight.detach(),
                "optimizer": self.optimizer.state_dict(), "generator": self.generator.get_state(),
                "moments_since": self.moments_since}

    def load_state_dict(self, state: dict) -> None:
        if state.get("kind", "lightgcn") != "lightgcn":
            raise ValueError(f"the saved server model is a {state['kind']} model, not this run "
                             "config's LightGCN; resume it with its own config or a new run-name")
        with torch.no_grad():
            self.user_weight.copy_(state["user"])
            self.item_weight.copy_(state["item"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.generator.set_state(state["generator"])
        if "moments_since" in state:  # (files written before it existed: all rows since 0)
            self.moments_since = {k: v.clone() for k, v in state["moments_since"].items()}

    def tables(self) -> dict[str, torch.Tensor]:
        """A detached copy of ``Z`` (what a snapshot stores)."""
        return {"user": self.user_weight.detach().clone(), "item": self.item_weight.detach().clone()}
