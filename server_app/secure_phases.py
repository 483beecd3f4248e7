"""The secure-aggregation phases of a round (``secure-aggregation = true``): the ``keys`` and
``shares`` stages before ``train``, the ``unmask`` stage and the sum's application after it.
A part of :class:`server_app.strategy.FedShareStrategy` (which sends the messages and owns
the state); the protocol is in common/secagg.py, one round's bookkeeping in
server_app/secure_aggregation.py."""

from __future__ import annotations

from common.protocol_secagg import SECAGG, SecAggReply
from common.secagg import SecAggError
from server_app.aggregation import NonFiniteTable
from server_app.exchange import excerpt, guarded
from server_app.records import PhaseStats, RoundRecord
from server_app.secure_aggregation import SecureRound
from server_app.validation import ReplyError, decode


class SecurePhases:
    """Mixed into the strategy: uses its ``cfg``, ``state``, ``train_bounds``,
    ``_message`` and ``_phase``."""

    def start_secure(self, grid, record: RoundRecord, nodes: list[int]) -> SecureRound:
        """The ``keys`` and ``shares`` stages; the returned round's ``sharers`` train."""
        cfg = self.cfg
        # the ring's seed is the round's, not a draw from the sampling generator: a run with
        # secure aggregation samples exactly the nodes the same run without it samples
        secure = SecureRound(record.round, nodes, cfg.secagg_neighbours, cfg.secagg_threshold,
                             cfg.secagg_clip, cfg.seed * 1_000_003 + record.round)
        self._secagg_phase(grid, record, "secagg-keys", secure.configure_keys(),
                           secure.aggregate_keys)
        self._secagg_phase(grid, record, "secagg-shares", secure.configure_shares(),
                           secure.aggregate_shares)
        return secure

    def finish_secure(self, grid, record: RoundRecord, secure: SecureRound) -> None:
        """The ``unmask`` stage, then the round's sum applied as per-row FedAvg (refused, the
        table kept, when it cannot be unmasked or a row's average change is beyond what
        honest nodes can produce)."""
        self._secagg_phase(grid, record, "secagg-unmask", secure.configure_unmask(),
                           secure.aggregate_unmask)
        stats, state = record.phase("secagg-unmask"), self.state
        if secure.total is None:
            return
        try:
            weighted, counts = secure.result(*state.item_emb.shape)
            limit = max(self.train_bounds.row_change(n, state.item_emb.shape[1])
                        for n in secure.examples.values())
            state.apply_row_sums(weighted, counts, limit)
        except (SecAggError, NonFiniteTable, ReplyError) as exc:
            stats.rejected.append(f"round's secure sum not applied: {excerpt(str(exc))}")

    def _secagg_phase(self, grid, record: RoundRecord, name: str, requests: dict, receive) -> None:
        messages = [self._message(n, SECAGG, r.to_content(), record.round)
                    for n, r in requests.items()]

        def aggregate(replies, stats: PhaseStats) -> None:
            for node, reply in replies:
                stats.ok += guarded(stats, node, name, lambda: receive(
                    node, decode(SecAggReply, reply.content)) or True) is not None
        self._phase(grid, record, name, messages, aggregate)
