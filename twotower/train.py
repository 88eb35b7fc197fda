"""Training the two-tower model on a prepared folder: `TrainConfig` and `fit()`.

Each step draws B training rows (user, positive item, the user's history before it), encodes
both sides and minimises a softmax cross-entropy of the positive among the candidates:

    full      every warm item of the catalog is a candidate (`catalog_softmax`): the exact
              multinomial likelihood of Mult-VAE (Liang et al. 2018, eq. 2), no sampling, so
              no sampling bias to correct; the item tower encodes the catalog each step
    sampled   the other positives of the batch are the candidates (`info_nce`):
                  logit_ij = cos(user_i, item_j) / τ − log q_j     (Yi et al. 2019, eq. 3)
              with accidental hits (item_j = item_i for j ≠ i) masked. q_j, the probability
              that item j is in a batch, comes from the training counts under this very
              sampler (`log_q_from_counts`), from the streaming estimator of Yi et al. 2019
              (Algorithm 2), or is left out (`logq="none"`). Mixed negatives (Yang et al.
              2020) add M uniform catalog items per step, with their own log q.

`softmax="auto"` (the default) is full up to `FULL_SOFTMAX_ITEMS` warm items, sampled above:
on the photo shop the full softmax raised warm recall@50 from 0.341 to 0.382 over in-batch
negatives (and lowered cold recall from 0.149 to 0.107); on ml-latest-small the two tie
(benchmarks/README.md, bench_two_tower.py). Each row's loss is weighted by its `weight`
column. The temperature is fixed or learned (as log τ). AdamW at a constant learning rate;
validation, and the model `fit` returns, use a moving average of its weights (`ema`).

After every epoch the model ranks the full catalog for the validation users (training items
masked, `twotower.validation`), logs recall@k, keeps the best epoch's weights and stops after
`patience` epochs without improvement. With `checkpoint_dir` every epoch ends in an atomic
`last.pt` (weights and their average, optimizer, estimator, early-stopping state, history);
a rerun resumes from it and ends exactly where an uninterrupted run would, since each
epoch's shuffle, id dropout and negative samples are drawn from generators seeded by
(seed, epoch, rank) alone. The loop around the step (seeding, DDP, autocast, the non-finite
check, logging, checkpoints) is `twotower.loop`'s, shared with SimCLR pretraining.

Under `torchrun` (a process group initialised by the caller) each rank trains on its share of
every global batch, `info_nce` gathers the other ranks' items as negatives (the full softmax
needs nothing gathered: every rank scores the same catalog), and DDP averages the gradients;
every rank validates the same weights, so they stop together.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel

from twotower.contrastive import catalog_softmax, info_nce
from twotower.data import prepared_manifest
from twotower.distributed import gather_with_grad, rank, world_size
from twotower.export import export_vectors, user_vectors_for
from twotower.frequency import LOGQ_MODES, LogQ, log_q_sources
from twotower.inputs import TrainingRows, item_features, load_training
from twotower.loop import Checkpoint, Epoch, Log, Loop, autocast, resolve_device, seeded, wrap
from twotower.towers import TowerConfig, TwoTower
from twotower.validation import validate, validation_queries
from twotower.vectors import Vectors

__all__ = ["FitResult", "TrainConfig", "export_vectors", "fit", "user_vectors_for"]

FULL_SOFTMAX_ITEMS = 20_000
"""`softmax="auto"` scores every warm item each step up to this catalog size: beyond it the
item tower's pass over the catalog costs more than a step should."""
RUNTIME_FIELDS = frozenset({"epochs", "device", "checkpoint_dir"})
"""The `TrainConfig` fields a resumed run may change (`twotower.loop.Checkpoint`): where it
runs, and how far, since the learning rate is constant and more epochs continue the same run."""


@dataclass
class TrainConfig:
    """How `fit` trains the two-tower model."""

    epochs: int = 30
    """Most passes over the training split (early stopping may end sooner)."""
    batch_size: int = 512
    """Training rows per step, over all processes (each rank takes batch_size / world)."""
    lr: float = 2e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    temperature: float = 0.05
    """Softmax temperature τ (the starting value when it is learned). In the searches of
    benchmarks/bench_two_tower.py a trial with τ = 0.046 and id_dim 256, the rest near these
    defaults, came within 0.003 of the best validation recall on three of the four data sets
    and tied τ = 0.1 on the fourth."""
    learn_temperature: bool = False
    """Learn log τ with the weights (clamped to [0.01, 1])."""
    logq: Literal["none", "counts", "streaming"] = "counts"
    """Sampling-bias correction: none, exact q from training counts, or streaming estimates."""
    streaming_alpha: float = 0.01
    """Moving-average weight (alpha) of the streaming frequency estimator."""
    mask_accidental_hits: bool = True
    """Mask in-batch negatives that are the row's own positive item."""
    mixed_negatives: int = 0
    """Uniformly sampled catalog items added to every step's negatives (0: in-batch only)."""
    max_history: int = 50
    """Most recent history items the user tower pools (a held-out user's fold-in included:
    the evaluation masks all of it, the model reads this many of its newest)."""
    softmax: Literal["auto", "full", "sampled"] = "auto"
    """full: every warm item is a negative of every row, the exact softmax (Mult-VAE's
    likelihood; logq and mixed_negatives do not apply); sampled: the batch's other positives
    (and mixed_negatives) with the logQ correction; auto: full up to FULL_SOFTMAX_ITEMS warm
    items, sampled above."""
    content_loss: float = 3.0
    """Weight of a second loss term, the same softmax with every item's content-only vector
    (image h and attributes, no id: what a cold product gets) in place of its full one; 0
    trains the full vectors only, as DropoutNet does (`twotower.towers`). Ignored without
    content inputs. On the demo's three shops, weights 1, 3 and 10 gave cold recall@50 of
    0.243 / 0.110 / 0.081, 0.174 / 0.153 / 0.129 and 0.131 / 0.163 / 0.190 at overall recall
    0.357, 0.355 and 0.351 on average (benchmarks/README.md): 3 for the steadiest cold path."""
    content_prior: bool = True
    """In the content loss, add each item's log training popularity to its content-only logit,
    a fixed prior: the content vector then fits P(i | u) / pop(i), what a product's image and
    attributes say about whose taste it suits, and is not asked to guess from h a popularity
    that nothing about a new product reveals (popularity as a separate factor in training,
    left out in ranking: Zhang et al. 2021, "Causal Intervention for Leveraging Popularity
    Bias in Recommendation"). Cold recall@50 on the demo's three shops: 0.161 / 0.165 / 0.111
    against 0.016 / 0.051 / 0.030 without, overall recall unchanged (benchmarks/README.md).
    False: the content vector fits popularity too."""
    use_weights: bool = True
    """Weigh each training row's loss by its `weight` (the log's, times event weights: a
    purchase may count more than a view); False: every row counts once."""
    chunk_size: int | None = None
    """Row block of the loss (never holds the full logits); None: dense."""
    val_k: int = 50
    """Validation recall@k that picks the best epoch."""
    patience: int = 4
    """Epochs without a better validation recall before stopping."""
    ema: float = 0.99
    """Decay of an exponential moving average of the weights, updated every step (Polyak
    averaging, `torch.optim.swa_utils.AveragedModel`, `debiased_ema`); validation judges, and
    `fit` returns, the average instead of the last step's weights, which wander between
    epochs by more than an epoch improves them. 0: none. On the demo's three shops (one
    thread, the same h and split), 0.99 without the bias correction against none: id-only
    recall@50 0.3541 against 0.3458, the image model's 0.3585 against 0.3550 (both within the
    seeds' spread), its cold recall 0.189 ± 0.006 against 0.152 ± 0.023, higher on every
    shop (benchmarks/README.md)."""
    max_val_users: int | None = 2000
    """Validation users ranked each epoch (a fixed random subset); None: all."""
    bf16: bool = True
    """bfloat16 autocast on CUDA (ignored on CPU)."""
    device: str = "cpu"
    """Where to train: cpu, cuda or cuda:N."""
    seed: int = 0
    """Seeds initialisation, shuffles, id dropout and sampled negatives."""
    data: str = ""
    """What the inputs are (the stage sets the prepared folder's, the embeddings' and the
    catalog's paths and stamps): a checkpoint resumes only on the data it was trained on."""
    checkpoint_dir: str | None = None
    """Folder of `last.pt`, resumed from when present; None: no checkpoints."""
    tower: TowerConfig = field(default_factory=TowerConfig)
    """Tower sizes and switches."""

    def __post_init__(self) -> None:
        if isinstance(self.tower, dict):
            self.tower = TowerConfig(**self.tower)
        for name in ("epochs", "batch_size", "max_history", "val_k", "patience"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if not 0 <= self.content_loss < math.inf:
            raise ValueError(f"content_loss must be finite and ≥ 0, got {self.content_loss}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if self.softmax not in ("auto", "full", "sampled"):
            raise ValueError(f"softmax must be auto, full or sampled, got {self.softmax!r}")
        if self.logq not in LOGQ_MODES:
            raise ValueError(f"logq must be none, counts or streaming, got {self.logq!r}")
        if self.mixed_negatives < 0:
            raise ValueError(f"mixed_negatives must be ≥ 0, got {self.mixed_negatives}")
        if not 0 <= self.ema < 1:
            raise ValueError(f"ema must be in [0, 1), got {self.ema}")
        if self.max_val_users is not None and self.max_val_users < 1:
            raise ValueError(f"max_val_users must be ≥ 1 or None, got {self.max_val_users}")


@dataclass
class FitResult:
    """What `fit` returns: the best epoch's model and the per-epoch record."""

    model: TwoTower
    history: list[dict[str, float]]
    best_epoch: int
    """1-based epoch whose weights `model` holds (0: no validation, the last epoch's)."""
    checkpoint: Path | None
    log_q: Tensor | None
    """(I,) the log q used for in-batch items (counts) or the final streaming estimates."""


def fit(
    prepared: str | os.PathLike[str],
    config: TrainConfig | None = None,
    *,
    embeddings: Vectors | None = None,
    catalog: pd.DataFrame | None = None,
    attributes: Sequence[str] = (),
    new_products: bool = False,
    log: Log | None = None,
    progress: bool = True,
    label: str | None = None,
) -> FitResult:
    """Train on the prepared folder's training split; validate on its valid split.

    embeddings: frozen image h per item_id for the item tower (None: ids and attributes only).
    catalog + attributes: categorical item columns for the item tower. new_products: give
    the products of `embeddings` / `catalog` that the log never mentions item rows too, after
    the prepared ones (`twotower.inputs.item_features`), so `export_vectors` covers them.
    log: called on every rank with {"loss", "temperature"} after every step (at the number of
    steps taken) and with the validation metrics, "epoch/...", after every epoch (at its number).
    progress: a bar per epoch with the loss and the validation recall, and the resume line, on
    stderr (rank 0), naming the run `label` (e.g. the pipeline stage; None: "two-tower").
    """
    cfg = config or TrainConfig()
    device = resolve_device(cfg.device)
    rows = load_training(prepared)
    world, me = world_size(), rank()
    if cfg.batch_size % world:
        raise ValueError(f"batch_size {cfg.batch_size} must be a multiple of the {world} ranks")
    batch = min(cfg.batch_size, len(rows) - len(rows) % world)
    local = batch // world
    steps = len(rows) // batch  # full batches only: every rank gathers the same shapes

    with seeded(cfg.seed, device):
        features = item_features(prepared, embeddings=embeddings, catalog=catalog,
                                 attributes=attributes, new_products=new_products)
        model = TwoTower(rows.users_warm, features, _resolved_tower(cfg.tower, prepared))
        model = model.to(device)
    log_tau = nn.Parameter(torch.tensor(math.log(cfg.temperature), device=device),
                           requires_grad=cfg.learn_temperature)
    params = [*model.parameters()] + ([log_tau] if cfg.learn_temperature else [])
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    average = (AveragedModel(model, avg_fn=debiased_ema(cfg.ema), use_buffers=True)
               if cfg.ema else None)
    batch_q, mixed_q = log_q_sources(cfg.logq, item_counts=rows.item_counts, batch_size=batch,
                                     alpha=cfg.streaming_alpha,
                                     mixed_draws=cfg.mixed_negatives * world)
    batch_q, mixed_q = batch_q.to(device), mixed_q.to(device)
    queries = validation_queries(prepared, cfg.max_val_users, cfg.seed)
    weighted = cfg.use_weights and bool(np.any(rows.weight != 1.0))
    warm_items = torch.as_tensor(np.flatnonzero(rows.item_counts > 0), device=device)
    log_popularity = (torch.as_tensor(np.log(np.maximum(rows.item_counts, 1)
                                             / max(rows.item_counts.sum(), 1)), device=device)
                      if cfg.content_prior else None)
    full = cfg.softmax == "full" or (cfg.softmax == "auto"
                                     and len(warm_items) <= FULL_SOFTMAX_ITEMS)

    state = _State(history=[], best_metric=-math.inf, best_epoch=0, best_weights=None,
                   bad_epochs=0, epoch=0, step=0)
    checkpoint = Checkpoint.of(cfg, RUNTIME_FIELDS)
    saved = checkpoint.load(device) if checkpoint is not None else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer.load_state_dict(saved["optimizer"])
        if average is not None:
            average.load_state_dict(saved["average"])
        with torch.no_grad():
            log_tau.copy_(saved["log_tau"])
        if saved["estimator"] is not None:
            batch_q.load_state_dict(saved["estimator"])
        state = _State(**saved["state"])
    net = wrap(model, device)
    order = sampler = None  # this epoch's shuffle and mixed-negative draws

    def begin_epoch(epoch: int) -> None:
        nonlocal order, sampler
        order = np.random.default_rng([cfg.seed, epoch]).permutation(len(rows))
        sampler = np.random.default_rng([cfg.seed, epoch, me])

    def step(i: int, generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        picked = order[i * batch + me * local:i * batch + (me + 1) * local]
        extra = (sampler.integers(0, rows.num_items, cfg.mixed_negatives)
                 if cfg.mixed_negatives and not full else None)
        history = rows.histories(picked, cfg.max_history)
        with autocast(device, cfg.bf16):
            per_row = _loss(net, model, rows, picked, history, extra, cfg, device,
                            log_tau, batch_q, mixed_q, state.step,
                            warm_items if full else None, log_popularity, generator)
        loss = per_row.mean() if not weighted else _weighted_mean(
            per_row, torch.as_tensor(rows.weight[picked], device=device))
        tau = log_tau.detach().exp()  # this step's τ, logged with its loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if average is not None:
            average.update_parameters(model)
        if cfg.learn_temperature:
            with torch.no_grad():
                log_tau.clamp_(math.log(0.01), 0.0)
        state.step += 1
        return loss, {"temperature": tau}

    def end_epoch(epoch: Epoch) -> dict[str, float]:
        record = {"epoch": epoch.number, "loss": float(np.mean(epoch.logged))}
        shown = {}  # on the epoch's bar
        if queries is not None:
            judged = model if average is None else average.module
            recall, ndcg, k = validate(judged, queries, cfg.val_k, cfg.max_history, device)
            record.update({f"val_recall_at_{k}": recall, f"val_ndcg_at_{k}": ndcg})
            shown[f"val_recall@{k}"] = recall
            if recall > state.best_metric:
                state.best_metric = recall
                state.best_epoch = epoch.number
                state.best_weights = copy.deepcopy(judged.state_dict())
                state.bad_epochs = 0
            else:
                state.bad_epochs += 1
        if log is not None:
            log({f"epoch/{k}": v for k, v in record.items() if k != "epoch"}, epoch.number)
        state.history.append(record)
        state.epoch = epoch.number
        return shown

    def checkpoint_state() -> dict[str, Any]:
        return {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "log_tau": log_tau.detach(),
                "average": None if average is None else average.state_dict(),
                "estimator": batch_q.state_dict() or None,  # None: a source that learns nothing
                "state": dataclasses.asdict(state)}

    # log_every 1: every step's loss is synced anyway, to log it with its τ
    loop = Loop(name="two-tower", device=device, epochs=cfg.epochs, steps=steps, log=log,
                progress=progress, checkpoint=checkpoint, label=label)
    loop.run(model, step, epoch_seed=lambda epoch: _epoch_seed(cfg.seed, epoch, me),
             begin_epoch=begin_epoch, end_epoch=end_epoch, state=checkpoint_state,
             start=state.epoch, stop=lambda: state.bad_epochs >= cfg.patience)
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    elif average is not None:  # nothing validated: the average of the last steps
        model.load_state_dict(average.module.state_dict())
    model.eval()
    return FitResult(model=model, history=state.history, best_epoch=state.best_epoch,
                     checkpoint=None if checkpoint is None else checkpoint.path,
                     log_q=batch_q.log_q(torch.arange(rows.num_items, device=device)))


# -------------------------------------------------------------------- the step
def _resolved_tower(tower: TowerConfig, prepared: str | os.PathLike[str]) -> TowerConfig:
    """`tower` with `user_id` decided when it is None: off on a holdout_users split, whose
    evaluation users have no trained id row, on otherwise."""
    if tower.user_id is not None:
        return tower
    holdout = prepared_manifest(prepared)["protocol"] == "holdout_users"
    return dataclasses.replace(tower, user_id=not holdout)


def debiased_ema(decay: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """`AveragedModel`'s avg_fn for Σ_k d^(n−k) w_k / Σ_k d^(n−k) over the n steps so far: the
    exponential moving average with Adam's bias correction (Kingma & Ba 2015, sec. 3). A plain
    one that starts from the first step's weights still gives them weight d^(n−1), 22% after
    150 steps at d = 0.99; this one is the plain mean early on and the moving average later."""
    def update(averaged: Tensor, current: Tensor, count: Tensor) -> Tensor:
        if not averaged.is_floating_point():  # a mask or a counter buffer: the current one
            return current
        return averaged + (current - averaged) * ((1 - decay) / (1 - decay ** (count + 1)))
    return update


def _weighted_mean(losses: Tensor, weights: Tensor) -> Tensor:
    """Σ w_i ℓ_i / Σ w_i over this rank's rows (0 when every weight is 0)."""
    return (losses * weights).sum() / weights.sum().clamp_min(1e-12)


def _loss(
    net: nn.Module, model: TwoTower, rows: TrainingRows, picked: np.ndarray,
    history: np.ndarray, extra: np.ndarray | None, cfg: TrainConfig, device: torch.device,
    log_tau: Tensor, batch_q: LogQ, mixed_q: LogQ, step: int, warm_items: Tensor | None,
    log_popularity: Tensor | None, generator: torch.Generator,
) -> Tensor:
    """Per-row losses (b,) of one local batch: users (b, d) against the whole warm catalog
    (full softmax) or the gathered positives and extras (info_nce); `generator` draws the id
    dropout, `log_popularity` (I,) is the content loss's prior (None: none)."""
    items = torch.as_tensor(rows.item[picked], device=device)  # (b,)
    if warm_items is not None:  # the full softmax
        users, catalog, content = net({
            "user_index": torch.as_tensor(rows.user[picked], device=device),
            "history": torch.as_tensor(history, device=device),
            "item_index": warm_items,
        }, generator)
        positives = torch.searchsorted(warm_items, items)  # column of each positive
        prior = None if log_popularity is None else log_popularity[warm_items]
        return _with_content(cfg, catalog, content, lambda vectors, prior: catalog_softmax(
            users.float(), vectors.float(), positives, temperature=log_tau.exp(),
            normalize=False, chunk_size=cfg.chunk_size, reduction="none",
            bias=None if prior is None else -prior), prior)
    candidates = items if extra is None else torch.cat(
        [items, torch.as_tensor(extra, device=device)])  # (b + M,): one item-tower pass
    users, item_vectors, content = net({
        "user_index": torch.as_tensor(rows.user[picked], device=device),
        "history": torch.as_tensor(history, device=device),
        "item_index": candidates,
    }, generator)
    if batch_q.learns:
        batch_q.update(gather_with_grad(items), step)  # every rank sees the global batch
    log_q = batch_q.log_q(items)
    extra_log_q = None if extra is None else mixed_q.log_q(candidates[len(items):])
    hits = cfg.mask_accidental_hits
    prior = None if log_popularity is None else log_popularity[candidates]

    def sampled(vectors: Tensor, prior: Tensor | None) -> Tensor:
        """The logQ-corrected softmax; a prior p adds log p to each candidate's logit."""
        bias, extra_bias = log_q, extra_log_q
        if prior is not None:
            bias = _minus(bias, prior[:len(items)])
            extra_bias = None if extra is None else _minus(extra_bias, prior[len(items):])
        return info_nce(
            users.float(), vectors[:len(items)].float(), temperature=log_tau.exp(),
            log_q=bias, candidate_ids=items if hits else None,
            extra_candidates=None if extra is None else vectors[len(items):].float(),
            extra_log_q=extra_bias,
            extra_candidate_ids=(candidates[len(items):] if hits and extra is not None
                                 else None),
            normalize=False, chunk_size=cfg.chunk_size, reduction="none")
    return _with_content(cfg, item_vectors, content, sampled, prior)


def _minus(log_q: Tensor | None, prior: Tensor) -> Tensor:
    """log_q − prior, where a None log_q (no correction) is 0."""
    return -prior if log_q is None else log_q - prior


def _with_content(cfg: TrainConfig, items: Tensor, content: Tensor | None,
                  loss: Callable[[Tensor, Tensor | None], Tensor],
                  prior: Tensor | None) -> Tensor:
    """Per-row loss of the item vectors, plus `content_loss` times that of the content-only
    vectors (when the tower has content inputs) with the candidates' log-popularity `prior`
    added to their logits (None: without)."""
    total = loss(items, None)
    if content is not None and cfg.content_loss > 0:
        total = total + cfg.content_loss * loss(content, prior)
    return total


# -------------------------------------------------------------------- state
def _epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """The seed of an epoch's id dropout on one rank."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


@dataclass
class _State:
    """What a checkpoint keeps beside the weights: the history and the early stopping."""

    history: list[dict[str, float]]
    best_metric: float
    best_epoch: int
    best_weights: dict[str, Tensor] | None
    bad_epochs: int
    epoch: int
    step: int
