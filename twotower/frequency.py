"""How often an item is in a training batch: the q of the logQ correction (Yi et al. 2019).

Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei, Chi. "Sampling-Bias-Corrected Neural
Modeling for Large Corpus Item Recommendations", RecSys 2019. With in-batch negatives, item j
is a negative in proportion to how often it is in a batch, so the softmax over the batch is
biased towards popular items; `info_nce` corrects each logit by −log q_j, with

    q_j = P(item j is in a training batch),

one number per batch (a step), not per row. The trainer reads it through one interface,
`LogQ`: `update(ids, step)` with each step's batch, then `log_q(ids)`. The sources:

    NoLogQ                       no correction (`log_q` is None)
    CountsLogQ                   exact, from the training split's item counts
                                 (`log_q_from_counts`), for the sampler the trainer uses: each
                                 epoch a random permutation of the N training rows is cut into
                                 batches of B rows
    StreamingFrequencyEstimator  Yi et al.'s Algorithm 2: estimated online from the batches
                                 actually seen, for streams whose counts are not known up front
    UniformLogQ                  the mixed negatives' q (Yang et al. 2020): D uniform draws
                                 over the catalog per step

`log_q_sources` builds the pair the trainer needs (the batch's items, the mixed negatives) from
`TrainConfig.logq`. Every log q any of them returns is at least `LOG_Q_FLOOR`, applied by
`floor_log_q` (which `info_nce` also applies to a log_q from elsewhere).

Counts and streaming give the same quantity: the estimator averages the number of steps
between two batches that contain the item, and the mean gap of a stationary stream is 1 / q_j.

Under DDP with gathered negatives (`info_nce` gathers log_q with the candidates) the batch that
matters is the global one: pass the global batch size to `log_q_from_counts`, and give a
`StreamingFrequencyEstimator` the gathered ids of the global batch. One fed only its rank's
local batch estimates the per-rank q; for small q that is the global q divided by the world
size, a constant shift of log_q that the softmax ignores.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Integral, Real
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["LOGQ_MODES", "LOG_Q_FLOOR", "CountsLogQ", "LogQ", "NoLogQ",
           "StreamingFrequencyEstimator", "UniformLogQ", "floor_log_q", "log_q_from_counts",
           "log_q_sources"]

LogQMode = Literal["none", "counts", "streaming"]
LOGQ_MODES: tuple[LogQMode, ...] = ("none", "counts", "streaming")
"""The corrections `log_q_sources` builds (`TrainConfig.logq`)."""
LOG_Q_FLOOR = math.log(1e-12)
"""log q is clipped below at log(1e-12) so an unseen item cannot get an unbounded logit."""

_PRODUCT_TERMS = 64  # up to this many factors the exact product; beyond it, Stirling's series
_STIRLING_MIN = 16  # Stirling's series (4 terms) for log z! with z ≥ this: error < 2e-14
_HASH_MULTIPLIER = 2654435761  # the prime nearest below 2³²/φ (Knuth's multiplicative hashing)
_MAX_BUCKETS = 2**31  # keeps (id mod H) · multiplier below 2⁶³: no int64 overflow


# ---------------------------------------------------------------------------------------------
# The interface and the floor.


def floor_log_q(log_q: Tensor) -> Tensor:
    """log q clipped below at `LOG_Q_FLOOR`, any shape: the one place the floor is applied.

    q = 0 (an item with no training row, or no uniform draw) would put +inf in its logit.
    """
    return log_q.clamp_min(LOG_Q_FLOOR)


class LogQ(nn.Module):
    """A source of log q_j, the probability that item j is in a batch, for the logQ correction.

    Once per step `update(ids, step)` with the step's batch (the gathered global batch under
    DDP), then `log_q(ids)` for the candidates: log q ≥ `LOG_Q_FLOOR` in the shape of the ids,
    or None for no correction (what `info_nce` takes as none). A module, so `.to(device)`
    moves its tables and `state_dict()` holds what it learns (nothing, for most sources).
    """

    learns = False
    """Whether `update` changes q: the trainer gathers the global batch only for such a one."""

    def update(self, item_ids: Tensor, step: int) -> None:
        """Record that the ids were in step's batch; a source whose q is fixed ignores it."""

    def log_q(self, item_ids: Tensor) -> Tensor | None:
        """log q of the ids (any shape) → that shape, or None (no correction)."""
        raise NotImplementedError


class NoLogQ(LogQ):
    """No correction (`logq="none"`): the softmax over the batch keeps its popularity bias."""

    def log_q(self, item_ids: Tensor) -> None:
        return None


# ---------------------------------------------------------------------------------------------
# Exact q from item counts.


def log_q_from_counts(
    counts: np.ndarray | Tensor | Sequence[int], batch_size: int
) -> np.ndarray | Tensor:
    """log P(item j is in a batch) when batches are B rows drawn without replacement.

    The trainer's sampler: each epoch shuffles the N = Σ_j c_j training rows and cuts the
    permutation into batches of B rows, so a batch is a uniform B-subset of the rows and item
    j (c_j rows) misses it with the hypergeometric probability of drawing none of its rows:

        q_j = 1 − C(N − c_j, B) / C(N, B)
            = 1 − Π_{i<B} (1 − c_j / (N − i)) = 1 − Π_{i<c_j} (1 − B / (N − i))

    (Yi et al. 2019 define q as the probability that the item is in the batch; this is its
    value for this sampler.) For B·c_j ≪ N, q_j ≈ B·c_j / N, i.e. log_q ≈ log(c_j / N) + log B,
    the per-row frequency shifted by a constant the softmax ignores; for frequent items q_j
    saturates at 1 where B·c_j / N grows without bound, and an item is counted once however
    many of its rows a batch holds (in-batch duplicates are accidental hits, masked by
    `info_nce`).

    Computed in float64 from log P(absent), the product over the k = min(B, c_j) factors of
    its shorter form: exactly as a sum of log1p terms for k ≤ 64, else with Stirling's series
    arranged so that the large terms cancel analytically (both agree with exact rational
    arithmetic to about 1e-12 in log q, N up to 10¹⁵); then log q = log(−expm1(log P(absent))),
    accurate for q near 0 and near 1. Once per distinct count, so fast for any catalog.

    Assumes every batch holds B rows (drop the last short batch, or N a multiple of B): a
    short last batch changes the share of batches that contain j by O(B/N).

    Args:
        counts: (I,) training rows per item, non-negative integers; N is their sum.
        batch_size: B rows per batch, 1 ≤ B ≤ N; under DDP with gathered negatives, the global
            batch (world size × per-rank batch).

    Returns:
        (I,) float64 log q_j, clipped below at `LOG_Q_FLOOR` (items with no rows get the
        floor): a numpy array, or a tensor on the device of `counts` if it is a tensor.
    """
    c = _check_counts(counts)
    n = int(c.sum())
    if isinstance(batch_size, bool) or not isinstance(batch_size, Integral):
        raise ValueError(f"batch_size must be an integer, got {batch_size!r}")
    if not 1 <= batch_size <= n:
        raise ValueError(
            f"batch_size must lie in [1, N] with N = {n} training rows (the sum of counts), "
            f"got {batch_size}"
        )
    values, inverse = torch.unique(c, return_inverse=True)  # items with one count share q
    log_absent = _log_absent(values, n, int(batch_size))
    log_q = floor_log_q(torch.log(-torch.expm1(log_absent)))[inverse]  # (I,)
    if isinstance(counts, Tensor):
        return log_q.to(counts.device)
    return log_q.numpy()


def _check_counts(counts: np.ndarray | Tensor | Sequence[int]) -> Tensor:
    """counts as a (I,) int64 CPU tensor; ValueError unless 1-D non-negative integers."""
    if isinstance(counts, Tensor):
        c = counts.detach().cpu()
    else:
        array = np.asarray(counts)
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"counts must be integers, got dtype {array.dtype}")
        c = torch.from_numpy(array.astype(np.int64, copy=False))
    if c.dtype == torch.bool or c.is_floating_point() or c.is_complex():
        raise ValueError(f"counts must be integers, got dtype {c.dtype}")
    if c.ndim != 1:
        raise ValueError(f"counts must have shape (items,), got {tuple(c.shape)}")
    c = c.to(torch.int64)
    negative = c < 0
    if bool(negative.any()):
        j = int(negative.nonzero()[0, 0])
        raise ValueError(f"counts must be ≥ 0, got {int(c[j])} at index {j}")
    return c


def _log_absent(c: Tensor, n: int, b: int) -> Tensor:
    """c (U,) int64 counts → (U,) float64 log P(no row in a batch) = log C(N − c, b) − log C(N, b).

    Symmetric in b and c, so with k = min(b, c), m = max(b, c) it is the product of k
    factors Σ_{i<k} log(1 − m / (N − i)); −inf when m + k > N (every batch holds the item).
    """
    k, m = torch.clamp(c, max=b), torch.clamp(c, min=b)
    out = torch.zeros(c.shape, dtype=torch.float64)
    always = m + k > n
    out[always] = -math.inf
    short = ~always & (k <= _PRODUCT_TERMS)
    long = ~always & (k > _PRODUCT_TERMS)
    if short.any():
        out[short] = _log_product(k[short], m[short].double(), n)
    if long.any():
        out[long] = _log_binomial_ratio(k[long].double(), m[long].double(), float(n))
    return out


def _log_product(k: Tensor, m: Tensor, n: int) -> Tensor:
    """Σ_{i<k} log1p(−m / (N − i)) term by term, k ≤ 64: each term exact to an ulp."""
    total = torch.zeros(k.shape, dtype=torch.float64)
    for i in range(int(k.max())):
        term = torch.log1p(-m / (n - i))
        total += torch.where(i < k, term, 0.0)  # finished rows may hold −inf or NaN here
    return total


def _log_binomial_ratio(k: Tensor, m: Tensor, n: float) -> Tensor:
    """log[(N − m)! (N − k)! / ((N − m − k)! N!)] for k > 64, without cancelling large terms.

    Stirling's log z! = (z + ½) log z − z + ½ log 2π + ω(z) for the four factorials, with the
    logarithms regrouped (s = N − m − k) into
        k log1p(−m/N) + m log1p(−k/N) + (s + ½) log1p(k·m / (N·s))
        + ω(N − m) + ω(N − k) − ω(s) − ω(N),
    three terms of the size of the result (about −k·m/N) and a tiny ω part, so none of the
    k·log N-sized terms of the plain lgamma form cancel in floating point. When s < 16 the
    lgamma form is used instead: there P(absent) < 1e-20, far below what q resolves.
    """
    s = n - m - k  # (k,) ≥ 0: the caller handles m + k > N
    series = (k * torch.log1p(-m / n) + m * torch.log1p(-k / n)
              + (s + 0.5) * torch.log1p(k * m / (n * s))
              + _omega(n - m) + _omega(n - k) - _omega(s) - _omega(torch.full_like(s, n)))
    lgamma = (torch.lgamma(n - m + 1) + torch.lgamma(n - k + 1)
              - torch.lgamma(s + 1) - math.lgamma(n + 1))
    return torch.where(s >= _STIRLING_MIN, series, lgamma)


def _omega(z: Tensor) -> Tensor:
    """Stirling's correction log z! − [(z + ½) log z − z + ½ log 2π], z ≥ 16 (where used)."""
    r = 1.0 / z
    r2 = r * r
    return r * (1 / 12 - r2 * (1 / 360 - r2 * (1 / 1260 - r2 / 1680)))


class CountsLogQ(LogQ):
    """Exact q_j from the training counts under the shuffled-epoch sampler (`log_q_from_counts`).

    Args:
        counts: (I,) training rows per item.
        batch_size: B rows per step, over all ranks.
    """

    table: Tensor

    def __init__(self, counts: np.ndarray | Tensor | Sequence[int], batch_size: int) -> None:
        super().__init__()
        table = torch.as_tensor(log_q_from_counts(counts, batch_size), dtype=torch.float32)
        self.register_buffer("table", table, persistent=False)  # (I,), recomputed, not saved

    def log_q(self, item_ids: Tensor) -> Tensor:
        return self.table[item_ids]


# ---------------------------------------------------------------------------------------------
# Streaming estimate (Yi et al. 2019, Algorithm 2).


class StreamingFrequencyEstimator(LogQ):
    """Online estimate of q_j, the probability that item j is in a batch (Yi et al. 2019, Alg. 2).

    Two hashed arrays of `num_buckets` entries: A[h] (buffer `last_step`) the last step at which
    an item of bucket h was in a batch, and B[h] (buffer `delta`) the estimated number of steps
    between two such batches, δ. At
    step t, for every bucket h of the batch's items:

        B[h] ← (1 − α)·B[h] + α·(t − A[h])        (exponential moving average of the gap)
        A[h] ← t

    and p̂ = 1 / B[h(y)], returned as log p̂, with p̂ ≤ 1 and log p̂ ≥ `LOG_Q_FLOOR`.

    Steps and batches: as in the paper, one `update` call is one step t and takes the whole
    batch. Each bucket is updated at most once per step, from the state before the step, so an
    id that appears several times in a batch (or several ids of one bucket) counts once: p̂
    estimates P(the item is in the batch), the quantity `log_q_from_counts` gives exactly, and
    the one `info_nce` expects. Steps must increase; gaps are counted in steps, so skipped
    step numbers count as batches without the item.

    Initialisation: the first `update` at step t₀ acts as if every bucket had been seen at
    t₀ − 1; a bucket's first occurrence sets B to its full gap since then (the waiting time
    to a first occurrence has the same mean 1/q as later gaps), later ones average. A bucket
    never seen after n steps reports p̂ = 1/(n + 1), the rate it would have if it appeared in
    the next batch: finite, and shrinking while it stays absent (p̂ = 1 before any update).

    Hash: h(y) = (y mod H + M·(⌊y / H⌋ mod H)) mod H, with H = num_buckets, M = 2654435761
    and floor division (so negative ids hash too). Ids in [0, H), such as the prepared
    folder's contiguous item_index for a catalog of at most H items, keep a bucket each and
    never collide; larger ids fold their high part in multiplicatively, so ids with equal
    residues (multiples of H, say) spread over the buckets. Ids sharing a bucket share one
    estimate: that of P(any of them is in the batch), at least the largest of their q's.

    State lives in buffers on the module's device (`.to(device)`; `update` and `log_q` take
    ids on that device), and `state_dict()` holds the buffers plus the step, `num_buckets` and
    `alpha`, so a checkpoint resumes exactly. Under DDP each rank estimates from the ids it is
    given, the local or the gathered global batch (see the module docstring).

    Args:
        num_buckets: H, entries of A and B, 1 ≤ H ≤ 2³¹.
        alpha: α in (0, 1], the moving average's weight of a new gap; the estimate follows a
            change of rate within a few/α occurrences of the item, with relative noise about
            √(α/2·(1 − q)) for independent batches.
    """

    last_step: Tensor
    delta: Tensor

    learns = True

    def __init__(self, num_buckets: int = 2**20, alpha: float = 0.01) -> None:
        super().__init__()
        if isinstance(num_buckets, bool) or not isinstance(num_buckets, Integral) or not (
            1 <= num_buckets <= _MAX_BUCKETS
        ):
            raise ValueError(
                f"num_buckets must be an integer in [1, 2**31], got {num_buckets!r}"
            )
        if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be a number in (0, 1], got {alpha!r}")
        self.num_buckets = int(num_buckets)
        self.alpha = float(alpha)
        self._step = -1  # the last step given to update; −1 before the first
        self.register_buffer("last_step", torch.zeros(self.num_buckets, dtype=torch.int64))  # A
        self.register_buffer("delta", torch.zeros(self.num_buckets))  # B; 0 = never seen

    def bucket(self, item_ids: Tensor) -> Tensor:
        """h(y) for int ids of any shape → int64 buckets in [0, num_buckets), same shape."""
        ids = self._check_ids(item_ids).to(torch.int64)
        h = self.num_buckets
        low = torch.remainder(ids, h)
        high = torch.remainder(torch.div(ids, h, rounding_mode="floor"), h)
        return torch.remainder(low + high * _HASH_MULTIPLIER, h)

    def update(self, item_ids: Tensor, step: int) -> None:
        """Record that the ids (any shape, e.g. a batch's (B,) item indices) were in step's batch.

        Steps must increase; all of a batch goes in one call.
        """
        if isinstance(step, bool) or not isinstance(step, Integral) or step < 0:
            raise ValueError(f"step must be a non-negative integer, got {step!r}")
        step = int(step)
        if step <= self._step:
            raise ValueError(
                f"step must increase from one update to the next: got {step} after {self._step}"
            )
        buckets = self.bucket(item_ids).reshape(-1)  # (b,), duplicates allowed
        if self._step < 0:
            self.last_step.fill_(step - 1)
        gap = (step - self.last_step[buckets]).to(self.delta.dtype)  # (b,) ≥ 1
        old = self.delta[buckets]
        new = torch.where(old > 0, (1 - self.alpha) * old + self.alpha * gap, gap)
        # Duplicated buckets write equal values (all computed from the state before the step),
        # so the bucket is updated once whichever write lands.
        self.delta[buckets] = new
        self.last_step[buckets] = step
        self._step = step

    def log_q(self, item_ids: Tensor) -> Tensor:
        """log p̂ for int ids of any shape → log probabilities of that shape, ≤ 0.

        In the dtype of the `delta` buffer (float32 unless the module was cast).
        """
        buckets = self.bucket(item_ids)
        delta = self.delta[buckets]
        # Never seen: the gap it would have if it were in the next batch.
        unseen = (self._step + 1 - self.last_step[buckets]).to(delta.dtype)
        delta = torch.where(delta > 0, delta, unseen).clamp_min(1.0)  # p̂ = 1/δ ≤ 1
        return floor_log_q(-torch.log(delta))

    def get_extra_state(self) -> dict[str, Any]:
        return {"num_buckets": self.num_buckets, "alpha": self.alpha, "step": self._step}

    def set_extra_state(self, state: dict[str, Any]) -> None:
        for name in ("num_buckets", "alpha"):
            if state[name] != getattr(self, name):
                raise ValueError(
                    f"the state was saved with {name}={state[name]!r} but this estimator has "
                    f"{name}={getattr(self, name)!r}; construct it with the saved value"
                )
        self._step = int(state["step"])

    def extra_repr(self) -> str:
        return f"num_buckets={self.num_buckets}, alpha={self.alpha}"

    def _check_ids(self, item_ids: Tensor) -> Tensor:
        if not isinstance(item_ids, Tensor):
            raise ValueError(f"item_ids must be a tensor, got {type(item_ids).__name__}")
        if item_ids.dtype == torch.bool or item_ids.is_floating_point() or item_ids.is_complex():
            raise ValueError(f"item_ids must be integers, got dtype {item_ids.dtype}")
        if item_ids.device != self.delta.device:
            raise ValueError(
                f"item_ids are on {item_ids.device} but the estimator's state is on "
                f"{self.delta.device}; move it with .to(device)"
            )
        return item_ids


# ---------------------------------------------------------------------------------------------
# Uniform draws: the mixed negatives' q.


class UniformLogQ(LogQ):
    """q of the mixed negatives: P(item j is among D uniform draws).

    Yang, Yi, Cheng, Hong, Li, Wang, Xu, Chi. "Mixed Negative Sampling for Learning Two-tower
    Neural Networks in Recommendations", WWW 2020 Companion: each step adds D items drawn
    uniformly from the catalog to the in-batch negatives. `info_nce` corrects their logits by
    −log q like those of the batch's items.

    D draws with replacement over I items miss j with probability (1 − 1/I)^D, so
    q = 1 − (1 − 1/I)^D for every item, computed as log(−expm1(D·log1p(−1/I))): accurate for
    q near 0 and near 1 (q = 1 for a catalog of one item).

    Args:
        num_items: I, the catalog the draws are uniform over.
        draws: D per step, over all ranks.
    """

    value: Tensor

    def __init__(self, num_items: int, draws: int) -> None:
        super().__init__()
        if num_items < 1 or draws < 1:
            raise ValueError(f"num_items and draws must be ≥ 1, got {num_items} and {draws}")
        log_q = (math.log(-math.expm1(draws * math.log1p(-1.0 / num_items)))
                 if num_items > 1 else 0.0)
        self.register_buffer("value", floor_log_q(torch.tensor(log_q)), persistent=False)

    def log_q(self, item_ids: Tensor) -> Tensor:
        return self.value.expand(item_ids.shape).clone()


# ---------------------------------------------------------------------------------------------
# The sources of a training config.


def log_q_sources(
    mode: LogQMode, *, item_counts: np.ndarray, batch_size: int, alpha: float, mixed_draws: int
) -> tuple[LogQ, LogQ]:
    """The sources of one `TrainConfig.logq`: (the batch's own items, the mixed negatives).

        none       `NoLogQ` for both
        counts     `CountsLogQ` for the batch's items
        streaming  a `StreamingFrequencyEstimator` with one bucket per item (no collisions)
    and, unless none, `UniformLogQ` for the mixed negatives (`NoLogQ` without them).

    Args:
        mode: one of `LOGQ_MODES`.
        item_counts: (I,) training rows per item.
        batch_size: B training rows per step, over all ranks.
        alpha: the streaming estimator's moving-average weight.
        mixed_draws: uniform catalog items added per step, over all ranks (0: none).
    """
    if mode not in LOGQ_MODES:
        raise ValueError(f"logq must be none, counts or streaming, got {mode!r}")
    if mode == "none":
        return NoLogQ(), NoLogQ()
    num_items = len(item_counts)
    batch: LogQ = (CountsLogQ(item_counts, batch_size) if mode == "counts"
                   else StreamingFrequencyEstimator(max(1, num_items), alpha))
    return batch, UniformLogQ(num_items, mixed_draws) if mixed_draws else NoLogQ()
