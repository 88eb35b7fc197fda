"""q for the logQ correction: the hypergeometric formula against exact arithmetic and the real
sampler, and Yi et al. 2019's Algorithm 2 against a naive twin and streams of known rates."""

from __future__ import annotations

import io
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import twotower.frequency as frequency
from twotower.contrastive import LOG_Q_FLOOR, info_nce
from twotower.frequency import StreamingFrequencyEstimator, log_q_from_counts

# ---------------------------------------------------------------------------------------------
# Naive twins, written from the formulas with Python integers and loops.


def naive_log_q(counts: list[int], batch_size: int) -> list[float]:
    """log(1 − C(N − c, B) / C(N, B)) in exact rational arithmetic, floored like log_q."""
    n = sum(counts)
    out = []
    for c in counts:
        q = 1 - Fraction(math.comb(n - c, batch_size), math.comb(n, batch_size))
        out.append(math.log(q.numerator) - math.log(q.denominator) if q else LOG_Q_FLOOR)
    return [max(v, LOG_Q_FLOOR) for v in out]


def exact_log_q(n: int, batch_size: int, c: int) -> float:
    """The same for huge N: P(absent) = Π_{i<k} (N − m − i) / (N − i), k = min(B, c)."""
    k, m = min(batch_size, c), max(batch_size, c)
    absent = Fraction(1)
    for i in range(k):
        absent *= Fraction(max(n - m - i, 0), n - i)
    q = 1 - absent
    return math.log(q.numerator) - math.log(q.denominator)


def naive_bucket(y: int, h: int) -> int:
    return (y % h + 2654435761 * ((y // h) % h)) % h


def naive_algorithm_2(stream, num_buckets: int, alpha: float):
    """Yi et al. 2019, Algorithm 2, one step per batch and each bucket once per step.

    The first step t₀ counts as if every bucket had been seen at t₀ − 1; a bucket's first gap
    sets B, later ones average. Returns y ↦ log p̂(y).
    """
    last, delta = {}, {}
    first = latest = None
    for t, ids in stream:
        first = t if first is None else first
        done = set()
        for y in ids:
            h = naive_bucket(y, num_buckets)
            if h in done:
                continue
            done.add(h)
            gap = t - last.get(h, first - 1)
            delta[h] = gap if h not in delta else (1 - alpha) * delta[h] + alpha * gap
            last[h] = t
        latest = t

    def log_q(y: int) -> float:
        h = naive_bucket(y, num_buckets)
        if h in delta:
            d = delta[h]
        else:  # never seen: the gap it would have if it were in the next batch
            d = 1.0 if first is None else latest + 1 - (first - 1)
        return max(-math.log(max(d, 1.0)), LOG_Q_FLOOR)

    return log_q


def run_estimator(stream, **kwargs) -> StreamingFrequencyEstimator:
    estimator = StreamingFrequencyEstimator(**kwargs)
    for t, ids in stream:
        estimator.update(torch.as_tensor(ids, dtype=torch.int64), t)
    return estimator


def bernoulli_stream(rates: torch.Tensor, seed: int) -> list[tuple[int, torch.Tensor]]:
    """rates (T, I): item i is in step t's batch with probability rates[t, i], independently."""
    g = torch.Generator().manual_seed(seed)
    present = torch.rand(rates.shape, generator=g, dtype=torch.float64) < rates
    return [(t, row.nonzero().squeeze(1)) for t, row in enumerate(present)]


def shuffled_epochs(counts: list[int], batch_size: int, epochs: int, seed: int) -> torch.Tensor:
    """The trainer's sampler: each epoch a random permutation of the rows cut into batches.

    Returns (epochs · N / B, B) the item of every row of every batch, in order.
    """
    rows = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))  # (N,)
    g = torch.Generator().manual_seed(seed)
    order = torch.argsort(torch.rand(epochs, rows.numel(), generator=g), dim=1)  # (E, N)
    return rows[order].reshape(-1, batch_size)


# ---------------------------------------------------------------------------------------------
# The floor: one constant, applied by one function, wherever a log q is made or used.


def test_one_floor_constant_governs_every_log_q(monkeypatch):
    floor = math.log(0.3)  # far above any real floor, so every path below hits it
    monkeypatch.setattr(frequency, "LOG_Q_FLOOR", floor)
    # Counts: q ≈ 2·1/100 for the rare item; the frequent one is in every other batch or more.
    log_q = log_q_from_counts([1, 99], 2)
    assert log_q[0] == floor and log_q[1] > floor
    # Streaming: item 1 at steps 0 and 10 (δ = 10), item 2 at every step (δ = 1).
    est = run_estimator([(t, [1, 2] if t % 10 == 0 else [2]) for t in range(11)],
                        num_buckets=8, alpha=1.0)
    assert est.log_q(torch.tensor([1, 2])).tolist() == [pytest.approx(floor), 0.0]
    # The loss clips a log_q made elsewhere by the same function.
    q, c = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(info_nce(q, c, log_q=torch.tensor([-math.inf, -5.0, -2.0, -9.0])),
                               info_nce(q, c, log_q=torch.full((4,), floor)))
    assert frequency.floor_log_q(torch.tensor([-2.0, -0.5])).tolist() == [
        pytest.approx(floor), -0.5]


def test_the_floor_is_log_1e_minus_12():
    assert frequency.LOG_Q_FLOOR == math.log(1e-12)
    assert frequency.floor_log_q(torch.tensor([-math.inf, -20.0])).tolist() == [
        pytest.approx(math.log(1e-12)), -20.0]


# ---------------------------------------------------------------------------------------------
# log_q_from_counts: exact arithmetic.


@settings(max_examples=200, deadline=None)
@given(
    counts=st.lists(st.integers(0, 150), min_size=1, max_size=6).filter(lambda c: sum(c) > 0),
    data=st.data(),
)
def test_log_q_matches_math_comb(counts, data):
    batch_size = data.draw(st.integers(1, sum(counts)))
    got = log_q_from_counts(np.array(counts), batch_size)
    assert got.tolist() == pytest.approx(naive_log_q(counts, batch_size), rel=0, abs=1e-10)


@pytest.mark.parametrize(
    ("n", "batch_size", "count"),
    [
        (1000, 100, 64),  # 64 product terms, the last exact case
        (1000, 100, 65),  # the first Stirling case
        (1000, 65, 300),
        (10**12, 4096, 1),  # B·c/N = 4e-9: no lgamma cancellation may survive
        (10**12, 4096, 64),
        (10**12, 4096, 65),
        (10**12, 65, 65),
        (10**10, 4096, 10**6),
        (10**15, 100, 200),
    ],
)
def test_log_q_exact_for_huge_and_boundary_cases(n, batch_size, count):
    got = log_q_from_counts([count, n - count], batch_size)[0]
    assert got == pytest.approx(exact_log_q(n, batch_size, count), rel=0, abs=1e-10)


def test_log_q_analytic_cases():
    # Small B·c/N: q = B·c/N (1 + O(B·c/N)); here B·c/N = 1e-6.
    log_q = log_q_from_counts([10, 10**9 - 10], 100)
    assert log_q[0] == pytest.approx(math.log(100 * 10 / 1e9), abs=2e-6)
    # An item with every row is in every batch; one with no row in none (the floor).
    assert log_q_from_counts([0, 5], 2).tolist() == [LOG_Q_FLOOR, 0.0]
    # B = N: every batch is the whole split.
    assert log_q_from_counts([1, 2, 3], 6).tolist() == [0.0, 0.0, 0.0]
    # B = 1: q is the row share c/N.
    assert np.exp(log_q_from_counts([1, 3], 1)).tolist() == pytest.approx([0.25, 0.75])
    # N = 4, B = 2, c = 1: q = 1 − C(3, 2)/C(4, 2) = 1 − 3/6 = 1/2.
    assert log_q_from_counts([1, 3], 2)[0] == pytest.approx(math.log(0.5))


def test_log_q_keeps_the_kind_of_its_input():
    counts = [3, 1, 0, 4]
    as_numpy = log_q_from_counts(np.array(counts), 2)
    as_tensor = log_q_from_counts(torch.tensor(counts), 2)
    assert isinstance(as_numpy, np.ndarray) and as_numpy.dtype == np.float64
    assert isinstance(as_tensor, torch.Tensor) and as_tensor.dtype == torch.float64
    assert as_numpy.shape == as_tensor.shape == (4,)
    np.testing.assert_array_equal(as_numpy, as_tensor.numpy())
    np.testing.assert_array_equal(log_q_from_counts(counts, 2), as_numpy)


# ---------------------------------------------------------------------------------------------
# log_q_from_counts: the sampler itself.


def test_log_q_is_the_share_of_batches_of_the_shuffled_epoch_sampler():
    counts = [30, 20, 12, 6, 3, 1, 1, 47]  # N = 120
    batch_size, epochs = 12, 3000  # 30,000 batches
    batches = shuffled_epochs(counts, batch_size, epochs, seed=0)  # (30000, 12)
    present = torch.zeros(batches.shape[0], len(counts), dtype=torch.bool)
    present.scatter_(1, batches, True)
    share = present.double().mean(0).numpy()  # (I,) share of batches holding each item

    q = np.exp(log_q_from_counts(counts, batch_size))
    # Binomial standard error; batches of one epoch are negatively correlated, so this is
    # conservative.
    se = np.sqrt(q * (1 - q) / batches.shape[0])
    assert np.all(np.abs(share - q) <= 4 * se + 1e-12), (share, q)
    # The small-B approximation B·c/N is far off for frequent items: c = 6 gives 0.6 for
    # a q of 0.48.
    approx = np.minimum(batch_size * np.array(counts) / sum(counts), 1.0)
    assert abs(share[3] - approx[3]) > 20 * se[3]


# ---------------------------------------------------------------------------------------------
# log_q_from_counts: bad input.


@pytest.mark.parametrize(
    ("counts", "batch_size", "message"),
    [
        ([3, -1, 2], 2, r"counts must be ≥ 0, got -1 at index 1"),
        ([[1, 2]], 1, "counts must have shape"),
        ([1.5, 2.0], 1, "counts must be integers"),
        (torch.tensor([1.0, 2.0]), 1, "counts must be integers"),
        (torch.tensor([True, False]), 1, "counts must be integers"),
        ([1, 2], 0, "batch_size must lie in"),
        ([1, 2], -3, "batch_size must lie in"),
        ([1, 2], 4, r"batch_size must lie in \[1, N\] with N = 3 .* got 4"),
        ([0, 0], 1, "N = 0"),
        ([1, 2], 2.0, "batch_size must be an integer"),
        ([1, 2], True, "batch_size must be an integer"),
    ],
)
def test_log_q_from_counts_rejects_bad_input(counts, batch_size, message):
    with pytest.raises(ValueError, match=message):
        log_q_from_counts(counts, batch_size)


# ---------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: the algorithm, step by step.


def test_hand_worked_stream_duplicates_skipped_steps_and_unseen_items():
    stream = [(0, [3, 3, 4]), (1, [3]), (3, [4]), (4, [])]
    est = run_estimator(stream, num_buckets=1024, alpha=0.5)
    # Step 0 acts as if everything was seen at step −1. Item 3: gap 1 at step 0 (once, though
    # twice in the batch) → δ = 1; gap 1 at step 1 → δ = 1. Item 4: gap 1 at step 0 → δ = 1;
    # gap 3 at step 3 (step 2 counts as a batch without it) → δ = ½·1 + ½·3 = 2. Item 99 was
    # never seen: it would have gap 4 + 1 − (−1) = 6 if it were in the next batch.
    expected = [0.0, -math.log(2), -math.log(6)]
    torch.testing.assert_close(est.log_q(torch.tensor([3, 4, 99])),
                               torch.tensor(expected), rtol=0, atol=1e-6)
    # One bucket: 3 and 4 are one item; gaps 1, 1, 2 → δ = 1, 1, 1.5.
    shared = run_estimator(stream, num_buckets=1, alpha=0.5)
    torch.testing.assert_close(shared.log_q(torch.tensor([3, 4, 99])),
                               torch.full((3,), -math.log(1.5)))


def test_before_any_update_every_item_is_certain():
    est = StreamingFrequencyEstimator(num_buckets=8)
    assert torch.equal(est.log_q(torch.tensor([0, 5, -7])), torch.zeros(3))


id_lists = st.lists(
    st.one_of(st.integers(-40, 40), st.integers(-(2**63), 2**63 - 1)), max_size=6
)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.integers(1, 3), min_size=0, max_size=12),
    batches=st.lists(id_lists, min_size=12, max_size=12),
    num_buckets=st.integers(1, 16),
    alpha=st.floats(0.01, 1.0),
    queries=st.lists(st.integers(-60, 60), min_size=1, max_size=8),
)
def test_estimator_matches_naive_algorithm_2(gaps, batches, num_buckets, alpha, queries):
    steps = np.cumsum([2, *gaps]).tolist()  # strictly increasing, maybe skipping numbers
    stream = list(zip(steps, batches, strict=False))
    est = run_estimator(stream, num_buckets=num_buckets, alpha=alpha)
    naive = naive_algorithm_2(stream, num_buckets, alpha)
    got = est.log_q(torch.tensor(queries))
    torch.testing.assert_close(got, torch.tensor([naive(y) for y in queries]),
                               rtol=1e-5, atol=1e-6)


def test_bucket_is_the_documented_hash():
    est = StreamingFrequencyEstimator(num_buckets=2**20)
    h = est.num_buckets
    # Ids in [0, H) keep a bucket each: a contiguous item_index never collides.
    assert torch.equal(est.bucket(torch.arange(h)), torch.arange(h))
    # Multiples of H would all share bucket 0 under plain mod H; the fold spreads them.
    multiples = est.bucket(h * torch.arange(1, 5001))
    assert multiples.unique().numel() == 5000
    g = torch.Generator().manual_seed(0)
    ids = torch.cat([torch.randint(-(2**63), 2**63 - 1, (200,), generator=g),
                     torch.tensor([-(2**63), 2**63 - 1, -1, 0])])
    assert est.bucket(ids).tolist() == [naive_bucket(y, h) for y in ids.tolist()]
    assert est.bucket(ids.reshape(2, -1)).shape == (2, 102)


# ---------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: streams of known rates.


def test_converges_on_a_stationary_stream():
    rates = torch.tensor([0.5] * 10 + [0.25] * 10 + [0.05] * 10, dtype=torch.float64)
    steps = 10_000  # ≥ 2500 occurrences of the frequent items: 5/α
    est = run_estimator(bernoulli_stream(rates.expand(steps, -1), seed=0), alpha=0.002)
    p_hat = est.log_q(torch.arange(30)).exp().double()
    frequent = rates >= 0.25  # relative noise √(α/2·(1 − q)) ≤ 2.5%
    ratio = p_hat[frequent] / rates[frequent]
    assert ((ratio - 1).abs() < 0.10).all(), ratio
    # The rare ones (500 occurrences, α·n = 1) are on their way, below the frequent ones.
    assert (p_hat[~frequent] < 0.15).all() and (p_hat[~frequent] > 0.02).all()


def test_follows_a_change_of_rate_within_a_few_over_alpha_occurrences():
    alpha, change, after = 0.02, 1500, 2000  # after: 4/α occurrences at the lower rate 0.1
    before = torch.tensor([0.4] * 25 + [0.1] * 25, dtype=torch.float64)
    # Items 0–24 fall from 0.4 to 0.1, items 25–49 rise from 0.1 to 0.4.
    rates = torch.cat([before.expand(change, -1), before.flip(0).expand(after, -1)])
    stream = bernoulli_stream(rates, seed=1)
    est = StreamingFrequencyEstimator(alpha=alpha)
    ids = torch.arange(50)

    def medians() -> tuple[float, float]:
        p_hat = est.log_q(ids).exp()
        return p_hat[:25].median().item(), p_hat[25:].median().item()

    for t, batch in stream[:change]:
        est.update(batch, t)
    down, up = medians()
    assert down == pytest.approx(0.4, rel=0.1) and up == pytest.approx(0.1, rel=0.1)
    for t, batch in stream[change : change + int(0.5 / alpha / 0.1)]:  # ½/α occurrences at 0.1
        est.update(batch, t)
    assert medians()[0] > 0.15  # still on its way down: the average has memory
    for t, batch in stream[change + int(0.5 / alpha / 0.1) :]:
        est.update(batch, t)
    down, up = medians()
    assert down == pytest.approx(0.1, rel=0.1) and up == pytest.approx(0.4, rel=0.1)


def test_estimator_on_the_real_sampler_converges_to_log_q_from_counts():
    """Each step one batch of the shuffled-epoch sampler, duplicates included: p̂ → q."""
    counts = [30, 20, 12, 6, 3, 1, 1, 47]
    batch_size = 12
    batches = shuffled_epochs(counts, batch_size, epochs=600, seed=2)  # (6000, 12)
    est = StreamingFrequencyEstimator(num_buckets=64, alpha=0.004)
    for t, batch in enumerate(batches):
        est.update(batch, t)
    q = torch.from_numpy(log_q_from_counts(counts, batch_size)).exp()
    p_hat = est.log_q(torch.arange(len(counts))).exp().double()
    frequent = q >= 0.25
    ratio = p_hat[frequent] / q[frequent]
    assert ((ratio - 1).abs() < 0.10).all(), (p_hat, q)


def test_colliding_ids_share_the_probability_that_either_is_in_the_batch():
    rates = torch.tensor([0.3, 0.2], dtype=torch.float64)
    stream = bernoulli_stream(rates.expand(5000, -1), seed=3)
    shared = run_estimator(stream, num_buckets=1, alpha=0.003)
    either = 1 - (1 - 0.3) * (1 - 0.2)  # 0.44, more than either item's own rate
    p_hat = shared.log_q(torch.tensor([0, 1])).exp()
    assert p_hat[0] == p_hat[1]
    assert p_hat[0].item() == pytest.approx(either, rel=0.1)


# ---------------------------------------------------------------------------------------------
# StreamingFrequencyEstimator: checkpoints, devices, the loss, bad input.


def test_state_dict_round_trip_gives_identical_estimates():
    rates = torch.linspace(0.02, 0.6, 40, dtype=torch.float64)
    stream = bernoulli_stream(rates.expand(400, -1), seed=4)
    est = StreamingFrequencyEstimator(num_buckets=32, alpha=0.05)  # collisions included
    for t, batch in stream[:250]:
        est.update(batch, t)
    saved = io.BytesIO()
    torch.save(est.state_dict(), saved)
    saved.seek(0)
    resumed = StreamingFrequencyEstimator(num_buckets=32, alpha=0.05)
    resumed.load_state_dict(torch.load(saved, weights_only=True))
    ids = torch.arange(-5, 60)
    assert torch.equal(resumed.log_q(ids), est.log_q(ids))
    for t, batch in stream[250:]:
        est.update(batch, t)
        resumed.update(batch, t)
    assert torch.equal(resumed.log_q(ids), est.log_q(ids))
    for name, buffer in est.state_dict().items():
        if isinstance(buffer, torch.Tensor):
            assert torch.equal(resumed.state_dict()[name], buffer), name
    with pytest.raises(ValueError, match="step must increase"):
        resumed.update(torch.tensor([1]), 250)  # the step is part of the state


def test_loading_a_state_with_another_alpha_fails():
    state = StreamingFrequencyEstimator(num_buckets=8, alpha=0.1).state_dict()
    with pytest.raises(ValueError, match=r"alpha=0\.1"):
        StreamingFrequencyEstimator(num_buckets=8, alpha=0.2).load_state_dict(state)


def test_log_q_has_the_shape_of_the_ids_and_feeds_info_nce():
    est = run_estimator([(0, [1, 2]), (1, [2])], num_buckets=16)
    ids = torch.tensor([[1, 2, 3], [2, 2, 1]])
    log_q = est.log_q(ids)
    assert log_q.shape == (2, 3) and log_q.dtype == torch.float32
    assert (log_q <= 0).all()
    q, c = torch.randn(2, 3, 4)
    loss = info_nce(q, c, log_q=est.log_q(ids[0]), candidate_ids=ids[0])
    assert torch.isfinite(loss)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_buckets": 0}, "num_buckets"),
        ({"num_buckets": 2**31 + 1}, "num_buckets"),
        ({"num_buckets": 4.0}, "num_buckets"),
        ({"num_buckets": True}, "num_buckets"),
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": -0.1}, "alpha"),
        ({"alpha": math.nan}, "alpha"),
        ({"alpha": "0.1"}, "alpha"),
    ],
)
def test_estimator_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        StreamingFrequencyEstimator(**kwargs)


@pytest.mark.parametrize(
    ("ids", "step", "message"),
    [
        (torch.tensor([1]), -1, "step must be a non-negative integer"),
        (torch.tensor([1]), 1.0, "step must be a non-negative integer"),
        (torch.tensor([1]), True, "step must be a non-negative integer"),
        (torch.tensor([1]), 5, "step must increase.*got 5 after 5"),
        (torch.tensor([1.0]), 6, "item_ids must be integers"),
        (torch.tensor([True]), 6, "item_ids must be integers"),
        ([1, 2], 6, "item_ids must be a tensor"),
        (torch.empty(2, dtype=torch.int64, device="meta"), 6, "move it with .to"),
    ],
)
def test_update_rejects_bad_input(ids, step, message):
    est = run_estimator([(5, [1])], num_buckets=8)
    with pytest.raises(ValueError, match=message):
        est.update(ids, step)
    assert est.log_q(torch.tensor([1])).item() == 0.0  # a rejected update changes nothing


@pytest.mark.gpu
def test_cuda_state_gives_the_cpu_estimates():
    rates = torch.linspace(0.05, 0.5, 20, dtype=torch.float64)
    stream = bernoulli_stream(rates.expand(300, -1), seed=5)
    cpu = StreamingFrequencyEstimator(num_buckets=16, alpha=0.05)
    cuda = StreamingFrequencyEstimator(num_buckets=16, alpha=0.05).to("cuda")
    for t, batch in stream:
        cpu.update(batch, t)
        cuda.update(batch.cuda(), t)
    ids = torch.arange(25)
    got = cuda.log_q(ids.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), cpu.log_q(ids))
    counts = torch.tensor([5, 0, 9, 1], device="cuda")
    log_q = log_q_from_counts(counts, 3)
    assert log_q.device.type == "cuda"
    np.testing.assert_array_equal(log_q.cpu().numpy(), log_q_from_counts(counts.cpu(), 3).numpy())


# ---------------------------------------------------------------------------------------------
# One interface: every TrainConfig.logq and the mixed negatives' q, against the formulas.


def naive_uniform_log_q(num_items: int, draws: int) -> float:
    """log P(item among `draws` uniform draws with replacement), in exact rationals."""
    q = 1 - Fraction(num_items - 1, num_items) ** draws
    return math.log(q.numerator) - math.log(q.denominator)


COUNTS = [5, 0, 3, 12, 1, 7]  # N = 28 rows, one item without any
STREAM = [(0, [3, 0, 3]), (1, [2, 5]), (2, [3]), (4, [0, 3, 4]), (5, [3, 2])]


def sources(mode: str, mixed_draws: int = 4) -> tuple[frequency.LogQ, frequency.LogQ]:
    return frequency.log_q_sources(mode, item_counts=np.array(COUNTS), batch_size=4,
                                   alpha=0.5, mixed_draws=mixed_draws)


@pytest.mark.parametrize("mode", frequency.LOGQ_MODES)
def test_each_logq_mode_through_the_one_interface_follows_its_formula(mode):
    batch, mixed = sources(mode)
    ids = torch.arange(len(COUNTS))
    for t, items in STREAM:  # the trainer's calls: update with the batch, then log_q
        batch.update(torch.tensor(items), t)
    got, got_mixed = batch.log_q(ids), mixed.log_q(ids)
    if mode == "none":
        assert got is None and got_mixed is None
        return
    want = {"counts": naive_log_q(COUNTS, 4),
            "streaming": [naive_algorithm_2(STREAM, len(COUNTS), 0.5)(y) for y in ids.tolist()],
            }[mode]
    assert got.dtype == torch.float32 and got.shape == ids.shape
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-6, atol=1e-6)
    # The mixed negatives: 4 uniform draws over the 6 items, the same q for every item.
    torch.testing.assert_close(got_mixed, torch.full((6,), naive_uniform_log_q(6, 4)))
    assert got_mixed.dtype == torch.float32
    # Only the streaming estimator learns from the batches, and only it has state to save.
    assert bool(batch.state_dict()) == (mode == "streaming") and not mixed.state_dict()


def test_counts_source_ignores_updates_and_keeps_the_shape_of_the_ids():
    batch, _ = sources("counts")
    ids = torch.tensor([[0, 1], [3, 3]])
    before = batch.log_q(ids)
    batch.update(torch.tensor([1, 1, 1]), 0)
    assert torch.equal(batch.log_q(ids), before)
    assert before[0, 1] == pytest.approx(LOG_Q_FLOOR)  # no training row: the floor
    assert torch.equal(before, torch.as_tensor(log_q_from_counts(COUNTS, 4),
                                               dtype=torch.float32)[ids])


@pytest.mark.parametrize(("num_items", "draws"), [(2, 1), (6, 4), (80, 16), (10**6, 3), (7, 500)])
def test_uniform_log_q_is_the_chance_of_a_uniform_draw(num_items, draws):
    got = frequency.UniformLogQ(num_items, draws).log_q(torch.tensor([0, num_items - 1]))
    torch.testing.assert_close(got, torch.full((2,), naive_uniform_log_q(num_items, draws)))


def test_uniform_log_q_of_one_item_is_certain_and_its_floor_is_the_shared_one(monkeypatch):
    assert frequency.UniformLogQ(1, 3).log_q(torch.tensor([0])).tolist() == [0.0]
    monkeypatch.setattr(frequency, "LOG_Q_FLOOR", math.log(0.3))
    got = frequency.UniformLogQ(100, 2).log_q(torch.tensor([5]))  # q ≈ 0.02
    assert got.item() == pytest.approx(math.log(0.3))


def test_sources_without_mixed_negatives_or_with_a_bad_mode():
    for mode in ("counts", "streaming"):
        batch, mixed = sources(mode, mixed_draws=0)
        assert isinstance(mixed, frequency.NoLogQ) and batch.log_q(torch.tensor([0])) is not None
    streaming, _ = sources("streaming")
    assert isinstance(streaming, StreamingFrequencyEstimator)
    assert streaming.num_buckets == len(COUNTS) and streaming.alpha == 0.5
    with pytest.raises(ValueError, match="logq must be none, counts or streaming"):
        sources("sampled")
    with pytest.raises(ValueError, match="draws must be ≥ 1"):
        frequency.UniformLogQ(5, 0)
