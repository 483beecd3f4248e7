"""With sharing-ratio 0 FedShare is exactly federated BPR-MF with FedAvg: no graph, no
global views, no alignment -- checked on the messages the server sends."""

import pytest

from harness.inprocess import InProcessGrid
from common.config import load_config
from common.datasets import default_data_root
from server_app.app import run_fedshare


class RecordingGrid(InProcessGrid):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent = []

    def push_messages(self, messages):
        messages = list(messages)
        self.sent += messages
        return super().push_messages(messages)


@pytest.mark.skipif(not (default_data_root() / "ml-100k").exists(), reason="no ML-100K")
def test_ratio_zero_sends_only_the_item_table(tmp_path):
    cfg = load_config({"max-users": 40, "num-rounds": 2, "eval-every": 2, "sharing-ratio": 0.0,
                       "fraction-train": 1.0, "cl-weight": 0.5,
                       "state-dir": str(tmp_path / "s"), "out-dir": str(tmp_path / "o")})
    grid = RecordingGrid(cfg.as_dict(), 2)
    result = run_fedshare(grid, cfg)
    kinds = {m.metadata.message_type for m in grid.sent}
    assert kinds == {"query.share", "train", "evaluate"}
    for message in grid.sent:
        assert set(message.content.array_records) <= {"ack", "items"}
    assert all(r["shared_edges"] == 0 and r["server_loss"] == 0.0 for r in result["rounds"])
    assert result["final"]["num-users"] > 0
