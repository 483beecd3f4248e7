"""Reference figures the end-to-end tests compare against."""

import numpy as np


def random_ranker_recall(ds, k: int) -> float:
    """Expected Recall@k of a uniformly random ranking over each user's unmasked items."""
    known = np.bincount(np.concatenate([ds.train[:, 0], ds.valid[:, 0]]), minlength=ds.num_users)
    users = np.unique(ds.test[:, 0])
    return float(np.mean(k / (ds.num_items - known[users])))
