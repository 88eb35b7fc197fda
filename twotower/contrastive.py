"""The contrastive core both trainers use: InfoNCE with in-batch negatives, and SimCLR's NT-Xent.

Both losses are one masked log-softmax (`_masked_logits` + `_softmax_nll`):

    logit_ij = sim(q_i, c_j) / temperature - log_q_j          (logQ correction, Yi et al. 2019)
    loss_i   = -logit_{i,p(i)} + log Σ_{j not masked} exp(logit_ij)

where p(i) is the column of row i's positive. A column is masked for row i when it is row i's
own view (NT-Xent) or an *accidental hit*: another candidate carrying the id of row i's
positive. Under `torch.distributed` the candidates are gathered from every rank with gradient
(`twotower.distributed.gather_with_grad`) and positives are offset by `rank() · B`, so the
negatives are global and the same code serves one process or many.

`chunk_size` computes the loss in row blocks with a custom backward that recomputes each
block's logits, so the (B, C) logit matrix is never held: memory O((B + C)·d + chunk·C).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from twotower.distributed import gather_with_grad, rank, world_size
from twotower.frequency import LOG_Q_FLOOR, floor_log_q

# LOG_Q_FLOOR lives with the frequencies; it stays importable from here, where it was defined.
__all__ = ["LOG_Q_FLOOR", "catalog_softmax", "info_nce", "nt_xent"]

Reduction = Literal["mean", "sum", "none"]
Temperature = float | Tensor


def info_nce(
    queries: Tensor,
    candidates: Tensor,
    *,
    temperature: Temperature = 0.05,
    log_q: Tensor | None = None,
    candidate_ids: Tensor | None = None,
    extra_candidates: Tensor | None = None,
    extra_log_q: Tensor | None = None,
    extra_candidate_ids: Tensor | None = None,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """InfoNCE / sampled softmax with in-batch negatives (Oord et al. 2018; Yi et al. 2019).

    Args:
        queries: (B, d) e.g. user vectors.
        candidates: (B, d); row i is the positive of query i, every other row a negative.
        temperature: τ > 0, a float or a scalar tensor (learnable temperature).
        log_q: (B,) log probability that candidate j appears in a batch; subtracted from the
            logit after the temperature division, clipped below at `LOG_Q_FLOOR`
            (`twotower.frequency.floor_log_q`).
        candidate_ids: (B,) integer ids; a negative with the id of row i's positive is masked.
        extra_candidates: (M, d) sampled negatives shared by every row (mixed negatives).
        extra_log_q: (M,) logQ of the extra candidates (needs `extra_candidates`).
        extra_candidate_ids: (M,) ids of the extra candidates, masked like in-batch hits
            (needs `candidate_ids`).
        normalize: L2-normalize queries and candidates, so sim is cosine.
        chunk_size: rows per block; never materialises the (B, B + M) logits.
        reduction: "mean", "sum" or "none" (per-row losses, shape (B,)).

    Under `torch.distributed` candidates, log_q, ids and extras are gathered from all ranks
    (every rank passes the same shapes); "mean" averages this rank's rows, and DDP's gradient
    averaging turns that into the mean over the global batch.
    """
    _check_pair("queries", queries, "candidates", candidates, same_rows=True)
    _check_options(temperature, chunk_size, reduction)
    n = candidates.shape[0]
    _check_vector("log_q", log_q, n, candidates)
    _check_vector("candidate_ids", candidate_ids, n, candidates)
    if extra_candidates is None:
        if extra_log_q is not None or extra_candidate_ids is not None:
            raise ValueError("extra_log_q and extra_candidate_ids need extra_candidates")
    else:
        _check_pair("queries", queries, "extra_candidates", extra_candidates, same_rows=False)
        m = extra_candidates.shape[0]
        _check_vector("extra_log_q", extra_log_q, m, extra_candidates)
        _check_vector("extra_candidate_ids", extra_candidate_ids, m, extra_candidates)
        if extra_candidate_ids is not None and candidate_ids is None:
            raise ValueError("extra_candidate_ids needs candidate_ids (the positives' ids)")
    _check_finite(queries=queries, candidates=candidates, log_q=log_q,
                  extra_candidates=extra_candidates, extra_log_q=extra_log_q)

    if normalize:
        queries, candidates = F.normalize(queries, dim=-1), F.normalize(candidates, dim=-1)
        if extra_candidates is not None:
            extra_candidates = F.normalize(extra_candidates, dim=-1)

    columns = [gather_with_grad(candidates)]  # (W·B, d), this rank's rows at rank()·B
    biases = [None if log_q is None else gather_with_grad(log_q)]
    ids = [None if candidate_ids is None else gather_with_grad(candidate_ids)]
    if extra_candidates is not None:
        columns.append(gather_with_grad(extra_candidates))  # (W·M, d)
        biases.append(None if extra_log_q is None else gather_with_grad(extra_log_q))
        ids.append(None if extra_candidate_ids is None else gather_with_grad(extra_candidate_ids))
    all_candidates = torch.cat(columns)
    bias = _join_optional(biases, [c.shape[0] for c in columns])
    if bias is not None:
        bias = floor_log_q(bias)  # a log_q from elsewhere than `twotower.frequency` may be −inf
    # Ids cover a prefix of the columns: extras without ids are never masked.
    all_ids = torch.cat([i for i in ids if i is not None]) if ids[0] is not None else None

    positives = torch.arange(n, device=queries.device) + rank() * n
    losses = _softmax_nll(
        queries, all_candidates, positives,
        temperature=temperature, bias=bias, ids=all_ids, exclude=None, chunk_size=chunk_size,
    )
    return _reduce(losses, reduction)


def catalog_softmax(
    queries: Tensor,
    catalog: Tensor,
    positives: Tensor,
    *,
    temperature: Temperature = 0.05,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
    bias: Tensor | None = None,
) -> Tensor:
    """Full softmax over a whole catalog: −log softmax(q_i · C / τ − bias)[positive_i].

    The exact multinomial likelihood that in-batch negatives approximate (Mult-VAE, Liang et
    al. 2018, eq. 2; Covington et al. 2016 before sampling): every item is a negative, so no
    sampling bias exists to correct and no accidental hit needs masking.

    Args:
        queries: (B, d) e.g. user vectors.
        catalog: (C, d) every candidate; the same on every rank (nothing is gathered).
        positives: (B,) long, row i's positive as a row of `catalog`.
        bias: (C,) per-item term subtracted from every row's logits, or None: e.g. minus an
            item's log popularity, a prior the queries then need not learn.
    """
    _check_pair("queries", queries, "catalog", catalog, same_rows=False)
    _check_options(temperature, chunk_size, reduction)
    if positives.shape != (queries.shape[0],):
        raise ValueError(f"positives must be ({queries.shape[0]},), got {tuple(positives.shape)}")
    if bias is not None and bias.shape != (catalog.shape[0],):
        raise ValueError(f"bias must be ({catalog.shape[0]},), got {tuple(bias.shape)}")
    _check_finite(queries=queries, catalog=catalog, bias=bias)
    if normalize:
        queries, catalog = F.normalize(queries, dim=-1), F.normalize(catalog, dim=-1)
    losses = _softmax_nll(queries, catalog, positives, temperature=temperature, bias=bias,
                          ids=None, exclude=None, chunk_size=chunk_size)
    return _reduce(losses, reduction)


def nt_xent(
    z1: Tensor,
    z2: Tensor,
    *,
    temperature: Temperature = 0.5,
    normalize: bool = True,
    chunk_size: int | None = None,
    reduction: Reduction = "mean",
) -> Tensor:
    """SimCLR's NT-Xent over 2N views (Chen et al. 2020, eq. 1).

    z1, z2: (N, d), two views of the same N images. For each of the 2N views the positive is
    its pair and the other 2N − 2 views are negatives:
        ℓ(i, j) = −log exp(sim(z_i, z_j)/τ) / Σ_{k≠i} exp(sim(z_i, z_k)/τ)
    averaged over all 2N views, i.e. over both directions. `reduction="none"` gives the 2N
    per-view losses, z1's views first. Under `torch.distributed` views of all ranks are
    negatives.
    """
    _check_pair("z1", z1, "z2", z2, same_rows=True)
    _check_options(temperature, chunk_size, reduction)
    _check_finite(z1=z1, z2=z2)
    if normalize:
        z1, z2 = F.normalize(z1, dim=-1), F.normalize(z2, dim=-1)
    n, total = z1.shape[0], z1.shape[0] * world_size()
    views = torch.cat([z1, z2])  # (2N, d) this rank's queries
    candidates = torch.cat([gather_with_grad(z1), gather_with_grad(z2)])  # (2·W·N, d)
    mine = torch.arange(n, device=z1.device) + rank() * n
    own_column = torch.cat([mine, mine + total])
    positives = torch.cat([mine + total, mine])
    losses = _softmax_nll(
        views, candidates, positives,
        temperature=temperature, bias=None, ids=None, exclude=own_column, chunk_size=chunk_size,
    )
    return _reduce(losses, reduction)


# ---------------------------------------------------------------------------------------------
# The one masked log-softmax.


def _masked_logits(
    q: Tensor,
    c: Tensor,
    positives: Tensor,
    *,
    temperature: Temperature,
    bias: Tensor | None,
    ids: Tensor | None,
    exclude: Tensor | None,
) -> Tensor:
    """Logits of a block of rows: q (b, d), c (C, d) → (b, C), masked entries at −inf.

    positives (b,) and exclude (b,) are column indices; ids (C',) labels the first C' columns.
    Computed in at least float32 whatever the input precision (bf16 matmul, fp32 softmax).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    logits = ((q / temperature) @ c.T).to(dtype)  # (b, C); scaling q is cheaper than logits
    # In-place from here: no autograd node saves these intermediate values.
    if bias is not None:
        logits -= bias.to(dtype)
    rows = torch.arange(q.shape[0], device=q.device)
    if ids is not None:
        hits = ids[None, :] == ids[positives][:, None]  # (b, C') same id as the row's positive
        hits[rows, positives] = False
        logits[:, : ids.shape[0]].masked_fill_(hits, -math.inf)
    if exclude is not None:
        logits[rows, exclude] = -math.inf
    return logits


def _softmax_nll(
    q: Tensor,
    c: Tensor,
    positives: Tensor,
    *,
    temperature: Temperature,
    bias: Tensor | None,
    ids: Tensor | None,
    exclude: Tensor | None,
    chunk_size: int | None,
) -> Tensor:
    """Per-row −log softmax(logits)[positive], shape (b,); dense or in row blocks."""
    if chunk_size is None:
        logits = _masked_logits(
            q, c, positives, temperature=temperature, bias=bias, ids=ids, exclude=exclude
        )
        return torch.logsumexp(logits, dim=1) - logits.gather(1, positives[:, None]).squeeze(1)
    return _ChunkedSoftmaxNLL.apply(q, c, positives, temperature, bias, ids, exclude, chunk_size)


class _ChunkedSoftmaxNLL(torch.autograd.Function):
    """`_softmax_nll` in row blocks; backward recomputes each block's logits.

    With p = softmax(logits_i) and g_i the incoming gradient of loss_i,
        ∂loss/∂logit_ij = g_i (p_ij − [j = p(i)])                         (call it G, (b, C))
        ∂/∂q_i = Σ_j G_ij c_j / τ,   ∂/∂c_j = Σ_i G_ij q_i / τ,   ∂/∂bias_j = −Σ_i G_ij,
        ∂/∂τ = −Σ_ij G_ij sim_ij / τ² = −Σ_i q_i · (∂/∂q_i) / τ.
    Only the (B,) log-sum-exp is kept between forward and backward.
    """

    @staticmethod
    @torch.amp.custom_fwd(device_type="cuda")
    def forward(ctx, q, c, positives, temperature, bias, ids, exclude, chunk_size):
        lse, losses = [], []
        for rows in _blocks(q.shape[0], chunk_size):
            logits = _block_logits(q, c, positives, temperature, bias, ids, exclude, rows)
            block_lse = torch.logsumexp(logits, dim=1)
            lse.append(block_lse)
            losses.append(block_lse - logits.gather(1, positives[rows, None]).squeeze(1))
        tau = temperature if isinstance(temperature, Tensor) else None
        ctx.save_for_backward(q, c, positives, tau, bias, ids, exclude, torch.cat(lse))
        ctx.temperature = None if tau is not None else temperature
        ctx.chunk_size = chunk_size
        return torch.cat(losses)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cuda")  # recompute under the forward's autocast state
    def backward(ctx, grad_losses):
        q, c, positives, tau, bias, ids, exclude, lse = ctx.saved_tensors
        temperature = ctx.temperature if tau is None else tau
        dtype = lse.dtype  # softmax and accumulation precision: float32 or float64
        grad_q = torch.empty(q.shape, dtype=dtype, device=q.device)
        grad_c = torch.zeros(c.shape, dtype=dtype, device=c.device)
        grad_bias = None if bias is None else torch.zeros(c.shape[0], dtype=dtype, device=c.device)
        for rows in _blocks(q.shape[0], ctx.chunk_size):
            logits = _block_logits(q, c, positives, temperature, bias, ids, exclude, rows)
            g = logits.sub_(lse[rows, None]).exp_()  # softmax; masked entries are exactly 0
            g[torch.arange(g.shape[0], device=g.device), positives[rows]] -= 1.0
            g *= grad_losses[rows, None].to(dtype)  # (b, C) ∂loss/∂logits
            if grad_bias is not None:
                grad_bias -= g.sum(0)
            g /= temperature  # ∂loss/∂sim
            g = g.to(q.dtype)  # matmuls in the embeddings' precision (bf16 on tensor cores)
            grad_q[rows] = g @ c
            grad_c += g.T @ q[rows]
        grad_tau = None
        if ctx.needs_input_grad[3]:
            grad_tau = (-(q.to(dtype) * grad_q).sum() / temperature).reshape(temperature.shape)
        return (
            grad_q.to(q.dtype) if ctx.needs_input_grad[0] else None,
            grad_c.to(c.dtype) if ctx.needs_input_grad[1] else None,
            None,
            grad_tau,
            grad_bias.to(bias.dtype) if ctx.needs_input_grad[4] else None,
            None,
            None,
            None,
        )


def _blocks(n: int, size: int) -> list[slice]:
    return [slice(start, min(start + size, n)) for start in range(0, n, size)]


def _block_logits(q, c, positives, temperature, bias, ids, exclude, rows: slice) -> Tensor:
    return _masked_logits(
        q[rows], c, positives[rows],
        temperature=temperature, bias=bias, ids=ids,
        exclude=None if exclude is None else exclude[rows],
    )


# ---------------------------------------------------------------------------------------------
# Argument checks and small helpers.


def _join_optional(parts: list[Tensor | None], sizes: list[int]) -> Tensor | None:
    """Concatenate optional per-column vectors, zeros standing in for missing ones."""
    if all(p is None for p in parts):
        return None
    like = next(p for p in parts if p is not None)
    filled = [like.new_zeros(s) if p is None else p for p, s in zip(parts, sizes, strict=True)]
    return torch.cat(filled)


def _reduce(losses: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "mean":
        return losses.mean()
    if reduction == "sum":
        return losses.sum()
    return losses


def _check_pair(name_a: str, a: Tensor, name_b: str, b: Tensor, *, same_rows: bool) -> None:
    for name, x in ((name_a, a), (name_b, b)):
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(
                f"{name} must have shape (rows, dim) with rows > 0, got {tuple(x.shape)}"
            )
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{name_a} and {name_b} differ in dimension: {a.shape[1]} vs {b.shape[1]}")
    if same_rows and a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_a} and {name_b} need one row each per example: "
            f"{a.shape[0]} vs {b.shape[0]} rows"
        )
    if a.device != b.device or a.dtype != b.dtype:
        raise ValueError(
            f"{name_a} ({a.dtype}, {a.device}) and {name_b} ({b.dtype}, {b.device}) "
            "must share dtype and device"
        )


def _check_vector(name: str, v: Tensor | None, length: int, like: Tensor) -> None:
    if v is None:
        return
    if v.ndim != 1 or v.shape[0] != length:
        raise ValueError(f"{name} must have shape ({length},), got {tuple(v.shape)}")
    if v.device != like.device:
        raise ValueError(f"{name} is on {v.device} but the embeddings are on {like.device}")
    if name.endswith("log_q") and not v.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {v.dtype}")


def _check_finite(**tensors: Tensor | None) -> None:
    """Reject NaN or ±inf embeddings and NaN or +inf log_q (−inf is q = 0, clipped later).

    All checks reduce to one flag vector, so a call costs one device synchronisation.
    """
    present = {name: t for name, t in tensors.items() if t is not None}
    flags = torch.stack([
        (torch.isnan(t) | torch.isposinf(t)).any() if name.endswith("log_q")
        else ~torch.isfinite(t).all()
        for name, t in present.items()
    ])
    if bool(flags.any()):
        name = next(n for n, bad in zip(present, flags.tolist(), strict=True) if bad)
        what = "NaN or +inf" if name.endswith("log_q") else "NaN or infinite"
        raise ValueError(f"{name} contains {what} values")


def _check_options(temperature: Temperature, chunk_size: int | None, reduction: str) -> None:
    if isinstance(temperature, Tensor):
        if temperature.numel() != 1:
            raise ValueError(f"temperature must be a scalar, got shape {tuple(temperature.shape)}")
        value = float(temperature.detach())
    else:
        value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {value}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or int(chunk_size) != chunk_size
                                   or chunk_size <= 0):
        raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
    if reduction not in ("mean", "sum", "none"):
        raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
