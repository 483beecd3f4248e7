"""The run configuration: ``[tool.flwr.app.config]`` read once into a validated model.

Keys are kebab-case in ``pyproject.toml`` and on the command line
(``flwr run . -c 'sharing-ratio=0.25'``); fields are snake_case here. Every
key is checked: an unknown key, a wrong type or an out-of-range value stops
the run with a :class:`ConfigError` that names the key.
"""

from __future__ import annotations

import hashlib
import json
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal, Mapping

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, field_validator,
                      model_validator)

from common.datasets import DATASETS, Dataset, load_dataset
from common.formats import FORMATS
from common.sources import GIVEN_VALID, SPLIT_MODES
from common.upload_privacy import UploadPrivacy


# Data keys added after runs were recorded (issue 15); see RunConfig.sharing_fingerprint.
class ConfigError(ValueError):
    """A run-config value is missing, unknown or out of range (the message names the key)."""


def _kebab(name: str) -> str:
    return name.replace("_", "-")


class RunConfig(BaseModel):
    """Every knob of a FedShare run (see README's table for meanings)."""

    model_config = ConfigDict(alias_generator=_kebab, populate_by_name=True, extra="forbid",
                              frozen=True)

    # data
    dataset: str = "ml-100k"
    data_dir: str = ""
    data_format: Literal[("auto",) + FORMATS] = "auto"  # type: ignore[valid-type]
    rating_threshold: float = Field(0.0, ge=0.0)
    k_core: int = Field(0, ge=0)
    split: Literal[SPLIT_MODES] = "auto"  # type: ignore[valid-type]
    valid_ratio: float = Field(0.1, ge=0.0, lt=0.5)
    test_ratio: float = Field(0.1, ge=0.0, lt=0.5)
    valid_from_train: bool = True
    given_valid: Literal[GIVEN_VALID] = "use"  # type: ignore[valid-type]
    max_users: int = Field(0, ge=0)
    seed: int = Field(0, ge=0, lt=2**32)
    # federation
    num_rounds: int = Field(20, ge=1)
    fraction_train: float = Field(0.2, gt=0.0, le=1.0)
    min_nodes: int = Field(1, ge=1)
    round_timeout: float = Field(600.0, gt=0.0)
    poll_interval: float = Field(0.05, gt=0.0, le=60.0)
    eval_every: int = Field(5, ge=0)
    eval_fraction: float = Field(1.0, gt=0.0, le=1.0)
    # nodes training in an evaluating round evaluate the model they receive in that train
    # message (one message instead of two; docs/design.md "Evaluation folded into train")
    eval_in_train: bool = False
    patience: int = Field(0, ge=0)
    # local (client) model
    embedding_dim: int = Field(64, ge=1, le=1024)
    local_epochs: int = Field(1, ge=1)
    local_lr: float = Field(0.01, gt=0.0)
    batch_size: int = Field(1024, ge=1)
    reg: float = Field(1e-4, ge=0.0)
    max_row_change: float = Field(0.0, ge=0.0)
    # the dataset fingerprint every node must report ("": the first node's fixes it)
    data_fingerprint_expected: str = Field("", alias="data-fingerprint", max_length=128)
    torch_threads: int = Field(1, ge=1)
    fusion: Literal["sum", "concat", "weighted", "ego"] = "ego"
    # fusion = "ego": weight of the ego-graph score (1: the graph model alone once it exists)
    ego_weight: float = Field(1.0, ge=0.0, le=1.0)
    # personalized sharing
    sharing_ratio: float = Field(0.5, ge=0.0, le=1.0)
    sharing_distribution: Literal["fixed", "uniform", "all-or-nothing"] = "fixed"
    sharing_file: str = ""
    # contrastive alignment
    cl_weight: float = Field(0.0, ge=0.0)
    cl_temperature: float = Field(1.0, gt=0.0)
    cl_side: Literal["user", "item", "both"] = "user"
    server_cl_weight: float = Field(0.0, ge=0.0)
    cl_negatives: int = Field(64, ge=0)
    cl_negative_pool: int = Field(8, ge=1)
    # server graph model
    num_layers: int = Field(3, ge=0, le=8)
    server_lr: float = Field(0.01, gt=0.0)
    server_epochs: float = Field(3.0, ge=0.0)
    server_batch_size: int = Field(8192, ge=1)
    # at most this many steps per server epoch: past server_batch_size x this many shared
    # edges the batch grows instead of the step count (0: no limit; docs/scaling.md)
    server_epoch_steps: int = Field(128, ge=0)
    server_reg: float = Field(1e-3, ge=0.0)
    snapshot_rounds: str = "0,5,10"
    # unsharing and unlearning
    unlearning_method: Literal["contrastive", "naive", "retrain", "receraser",
                               "fru"] = "contrastive"
    unlearn_rounds: int = Field(3, ge=0)
    unlearn_hops: int = Field(1, ge=0, le=8)
    unlearn_steps: int = Field(5, ge=0)
    unlearn_weight: float = Field(1.0, ge=0.0)
    unlearn_temperature: float = Field(0.2, gt=0.0)
    unshare_round: int = Field(0, ge=0)
    unshare_user_fraction: float = Field(0.1, ge=0.0, le=1.0)
    unshare_item_fraction: float = Field(1.0, gt=0.0, le=1.0)
    ratio_schedule: str = ""
    unshare_poll_every: int = Field(5, ge=1)
    # unlearning-method "receraser": the server model is a RecEraser ensemble (docs/receraser.md)
    receraser_shards: int = Field(10, ge=1, le=1000)
    receraser_partition: Literal["user", "random"] = "user"
    receraser_epochs: int = Field(100, ge=1)
    receraser_aggregator_epochs: int = Field(10, ge=1)
    # unlearning-method "fru": the server model's update log keeps the top fru-alpha of each
    # round's changed rows; a replayed round calibrates fru-calibration x its server epochs
    fru_alpha: float = Field(0.5, gt=0.0, le=1.0)
    fru_calibration: float = Field(0.1, gt=0.0, le=1.0)
    # upload privacy (issue 11; common/upload_privacy.py): what the server can read off uploads
    # what a node downloads: the (I, d) item tables' precision on the wire (float16: half)
    download_precision: Literal["float32", "float16"] = "float32"
    upload_mode: Literal["auto", "rows", "none"] = "auto"
    upload_rows: Literal["touched", "all"] = "touched"
    upload_padding: float = Field(0.0, ge=0.0, le=100.0)
    upload_counts: Literal["exact", "coarse"] = "exact"
    dp_epsilon: float = Field(0.0, ge=0.0)
    dp_delta: float = Field(1e-5, gt=0.0, lt=1.0)
    dp_clip: float = Field(0.1, gt=0.0)
    # secure aggregation (common/secagg.py): the server sees only a round's sum of row updates
    secure_aggregation: bool = False
    secagg_neighbours: int = Field(16, ge=2, le=1000)
    secagg_threshold: float = Field(0.5, gt=0.0, le=1.0)
    secagg_clip: float = Field(10.0, gt=0.0, le=1e6)
    # where things go
    run_name: str = Field("", pattern=r"^[A-Za-z0-9._-]*$", max_length=100)
    state_dir: str = ".fedshare-state"
    out_dir: str = "results"

    @field_validator("dataset")
    @classmethod
    def _dataset_name_or_path(cls, value: str) -> str:
        if value in DATASETS or "/" in value or "\\" in value:
            return value
        raise ValueError(f"expected a dataset name ({', '.join(DATASETS)}) or a path containing '/'")

    @field_validator("run_name")
    @classmethod
    def _not_a_path(cls, value: str) -> str:
        if value and set(value) == {"."}:
            raise ValueError("must name a folder, not '.' or '..'")
        return value

    @field_validator("snapshot_rounds")
    @classmethod
    def _rounds_list(cls, value: str) -> str:
        try:
            rounds = [int(tok) for tok in value.replace(" ", "").split(",") if tok]
        except ValueError as exc:
            raise ValueError(f"expected comma-separated round numbers, got {value!r}") from exc
        if any(r < 0 for r in rounds):
            raise ValueError("round numbers must be >= 0")
        return ",".join(str(r) for r in sorted(set(rounds)))

    @field_validator("ratio_schedule")
    @classmethod
    def _ratio_schedule(cls, value: str) -> str:
        try:
            steps = _parse_schedule(value)
        except ValueError as exc:
            raise ValueError(f"expected 'round:ratio,...' (e.g. '5:0.25,10:0.75'), got "
                             f"{value!r}") from exc
        if any(r < 1 or not 0.0 <= q <= 1.0 for r, q in steps):
            raise ValueError("rounds must be >= 1 and ratios in [0, 1]")
        return ",".join(f"{r}:{q:g}" for r, q in steps)

    @model_validator(mode="after")
    def _can_unlearn(self) -> "RunConfig":
        """Contrastive unlearning needs a snapshot older than any shared edge: round 0; so
        does FRU's rollback (round 0 plus the logged updates)."""
        needs_zero = self.unlearning_method == "fru" or \
            (self.unlearning_method == "contrastive" and self.unlearn_rounds > 0)
        if needs_zero and 0 not in self.snapshot_round_list:
            raise ValueError("snapshot-rounds must include 0 for unlearning-method "
                             f"{self.unlearning_method!r} (the only snapshot older than every "
                             f"shared edge; got {self.snapshot_rounds!r}); or use 'naive' or "
                             "'retrain'")
        return self

    @model_validator(mode="after")
    def _receraser_alone(self) -> "RunConfig":
        """The ensemble has no item-side alignment term (its sub-models train on shards)."""
        if self.unlearning_method == "receraser" and self.server_cl_weight > 0:
            raise ValueError("server-cl-weight must be 0 with unlearning-method 'receraser' "
                             f"(got {self.server_cl_weight}): the ensemble's shards train with "
                             "BPR only")
        return self

    @model_validator(mode="after")
    def _secure_rows(self) -> "RunConfig":
        """Secure aggregation sums item-row updates: it needs rows to upload, and upload DP
        (noise per node) is a different defence of the same rows."""
        if self.secure_aggregation and (self.upload_mode == "none" or self.dp_epsilon > 0):
            raise ValueError("secure-aggregation needs upload-mode 'auto' or 'rows' and "
                             f"dp-epsilon 0 (got {self.upload_mode!r}, {self.dp_epsilon})")
        return self

    @property
    def ratio_steps(self) -> tuple[tuple[int, float], ...]:
        """``ratio-schedule`` as ((round, ratio), ...), sorted by round."""
        return _parse_schedule(self.ratio_schedule)

    @property
    def snapshot_round_list(self) -> tuple[int, ...]:
        return tuple(int(tok) for tok in self.snapshot_rounds.split(",") if tok)

    @property
    def upload_privacy(self) -> UploadPrivacy:
        """The upload defences; ``auto`` withholds item rows whenever the run shares (the
        server's graph carries the collaborative signal) and uploads them for the FedAvg
        baseline (nothing shared: the item table is the only global model) or when they go
        through secure aggregation."""
        mode = self.upload_mode if self.upload_mode != "auto" else \
            "none" if self.sharing_enabled and not self.secure_aggregation else "rows"
        return UploadPrivacy(mode, self.upload_rows, self.upload_padding,
                             self.dp_epsilon, self.dp_delta, self.dp_clip, self.upload_counts)

    @property
    def sharing_enabled(self) -> bool:
        """False for the FedAvg baseline: no graph, no alignment."""
        return self.sharing_ratio > 0.0 or bool(self.sharing_file)

    def evaluates(self, rnd: int) -> bool:
        """Whether round ``rnd`` ends with a federated evaluation (every ``eval-every``
        rounds and the last)."""
        return bool(self.eval_every) and (rnd % self.eval_every == 0 or rnd == self.num_rounds)

    def as_dict(self) -> dict[str, Any]:
        """Kebab-case dict, as in ``pyproject.toml`` (for manifests)."""
        return self.model_dump(by_alias=True)

    def data_fingerprint(self) -> str:
        """Short hash of what decides a node's users and interactions (not what they share):
        a node keeps one sharing ledger per data setup."""
        return _digest({k: self.as_dict()[k] for k in DATA_KEYS})

    def sharing_fingerprint(self) -> str:
        """Short hash of the data setup and the sharing policy, including the sharing
        file's *contents* (editing the file is a policy change)."""
        keys = {k: self.as_dict()[k] for k in (*DATA_KEYS, "sharing-ratio",
                                                "sharing-distribution", "sharing-file")}
        if self.sharing_file:
            path = Path(self.sharing_file)
            keys["sharing-file-sha256"] = hashlib.sha256(path.read_bytes()).hexdigest() \
                if path.exists() else "missing"
        return _digest(keys)

    def data_root(self) -> Path | None:
        return Path(self.data_dir) if self.data_dir else None

    def load_data(self) -> Dataset:
        """The dataset these data keys describe (:func:`common.datasets.load_dataset`, cached)."""
        return load_dataset(self.dataset, self.data_root(), rating_threshold=self.rating_threshold,
                            seed=self.seed, valid_ratio=self.valid_ratio, test_ratio=self.test_ratio,
                            max_users=self.max_users or None, k_core=self.k_core, split=self.split,
                            fmt=self.data_format, valid_from_train=self.valid_from_train,
                            given_valid=self.given_valid)


DATA_KEYS = ("dataset", "data-format", "rating-threshold", "k-core", "split", "valid-ratio",
             "test-ratio", "valid-from-train", "given-valid", "max-users", "seed")


def _digest(values: dict) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True).encode()).hexdigest()[:12]


def _parse_schedule(value: str) -> tuple[tuple[int, float], ...]:
    steps = [tok.split(":") for tok in value.replace(" ", "").split(",") if tok]
    if any(len(step) != 2 for step in steps):
        raise ValueError(value)
    return tuple(sorted((int(r), float(q)) for r, q in steps))


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "<config>"
        if not item["loc"]:
            lines.append(item["msg"].removeprefix("Value error, "))
        elif item["type"] == "extra_forbidden":
            lines.append(f"{key}: unknown config key")
        else:
            lines.append(f"{key}: {item['msg']} (got {item.get('input')!r})")
    return "invalid run config: " + "; ".join(lines)


def load_config(run_config: Mapping[str, Any]) -> RunConfig:
    """Validate a Flower ``run_config`` (kebab-case keys) into a :class:`RunConfig`.

    Validated once per distinct config and process: a node validates the same run config on
    every message (a cross-user simulation sends thousands a round); the model is frozen, so
    sharing it is safe. Unhashable values (not a Flower config) are validated uncached."""
    try:
        key = tuple(sorted(run_config.items()))
        hash(key)
    except TypeError:
        return _validate(run_config)
    return _validate_cached(key)


@lru_cache(maxsize=64)
def _validate_cached(items: tuple) -> RunConfig:
    return _validate(dict(items))


def _validate(run_config: Mapping[str, Any]) -> RunConfig:
    try:
        return RunConfig.model_validate(dict(run_config))
    except ValidationError as exc:
        raise ConfigError(_describe(exc)) from None
