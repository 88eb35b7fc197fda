"""The contrastive core against naive twins written from the papers, analytic cases and the
seed's worked numbers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from twotower.contrastive import LOG_Q_FLOOR, catalog_softmax, info_nce, nt_xent

# ---------------------------------------------------------------------------------------------
# Naive twins: Python loops over rows and columns, straight from the formulas.


def _unit(v: list[float]) -> list[float]:
    norm = math.sqrt(sum(x * x for x in v))
    return [x / norm for x in v]


def _dot(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def naive_info_nce(q, c, tau, log_q=None, ids=None, extra=None, extra_log_q=None,
                   extra_ids=None, normalize=True) -> float:
    """Yi et al. 2019 sampled softmax: logit_ij = s_ij/τ − log q_j, accidental hits removed."""
    q, c = q.tolist(), c.tolist()
    extra = [] if extra is None else extra.tolist()
    if normalize:
        q, c, extra = [_unit(v) for v in q], [_unit(v) for v in c], [_unit(v) for v in extra]
    columns = c + extra
    bias = (log_q.tolist() if log_q is not None else [0.0] * len(c)) + (
        extra_log_q.tolist() if extra_log_q is not None else [0.0] * len(extra))
    bias = [max(b, math.log(1e-12)) for b in bias]
    labels = None
    if ids is not None:
        extra_labels = extra_ids.tolist() if extra_ids is not None else [None] * len(extra)
        labels = ids.tolist() + extra_labels
    total = 0.0
    for i in range(len(q)):
        positive = _dot(q[i], c[i]) / tau - bias[i]
        denominator = 0.0
        for j, column in enumerate(columns):
            if j != i and labels is not None and labels[j] == labels[i]:
                continue  # accidental hit: the same item as row i's positive
            denominator += math.exp(_dot(q[i], column) / tau - bias[j])
        total += -positive + math.log(denominator)
    return total / len(q)


def naive_nt_xent(z1, z2, tau) -> float:
    """Chen et al. 2020, eq. 1, averaged over all 2N views."""
    z = [_unit(v) for v in z1.tolist() + z2.tolist()]
    n2 = len(z)
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denominator = sum(math.exp(_dot(z[i], z[k]) / tau) for k in range(n2) if k != i)
        total += -_dot(z[i], z[j]) / tau + math.log(denominator)
    return total / n2


@st.composite
def retrieval_batches(draw):
    b = draw(st.integers(1, 7))
    d = draw(st.integers(1, 6))
    m = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    case = {
        "queries": torch.randn(b, d, generator=g, dtype=torch.float64),
        "candidates": torch.randn(b, d, generator=g, dtype=torch.float64),
        "temperature": draw(st.floats(0.05, 2.0)),
        "normalize": draw(st.booleans()),
    }
    if draw(st.booleans()):
        case["log_q"] = torch.rand(b, generator=g, dtype=torch.float64).log() * 3
    if draw(st.booleans()):  # few distinct ids, so accidental hits happen
        case["candidate_ids"] = torch.randint(0, 3, (b,), generator=g)
    if draw(st.booleans()):
        case["extra_candidates"] = torch.randn(m, d, generator=g, dtype=torch.float64)
        if draw(st.booleans()):
            case["extra_log_q"] = torch.rand(m, generator=g, dtype=torch.float64).log()
        if "candidate_ids" in case and draw(st.booleans()):
            case["extra_candidate_ids"] = torch.randint(0, 3, (m,), generator=g)
    return case


@settings(max_examples=80, deadline=None)
@given(retrieval_batches())
def test_info_nce_equals_naive_twin(case):
    expected = naive_info_nce(
        case["queries"], case["candidates"], case["temperature"], case.get("log_q"),
        case.get("candidate_ids"), case.get("extra_candidates"), case.get("extra_log_q"),
        case.get("extra_candidate_ids"), case["normalize"],
    )
    assert info_nce(**case).item() == pytest.approx(expected, rel=1e-9, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 6), st.integers(1, 6), st.floats(0.05, 2.0), st.integers(0, 2**31 - 1))
def test_nt_xent_equals_naive_twin(n, d, tau, seed):
    g = torch.Generator().manual_seed(seed)
    z1, z2 = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    assert nt_xent(z1, z2, temperature=tau).item() == pytest.approx(
        naive_nt_xent(z1, z2, tau), rel=1e-9, abs=1e-9
    )


# ---------------------------------------------------------------------------------------------
# Analytic cases.


@pytest.mark.parametrize("n", [1, 2, 5, 64])
def test_all_equal_embeddings_give_exactly_log_2n_minus_1(n):
    z = torch.ones(n, 16, dtype=torch.float64)
    assert nt_xent(z, z.clone()).item() == pytest.approx(math.log(2 * n - 1), abs=1e-12)
    # InfoNCE's partition has the B in-batch candidates: log B.
    assert info_nce(z, z.clone()).item() == pytest.approx(math.log(n), abs=1e-12)


def test_random_unit_vectors_in_high_dimension_give_log_2n_minus_1():
    n = 256
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(2, n, 512, generator=g)
    loss = nt_xent(z1, z2, temperature=0.5).item()
    assert loss == pytest.approx(math.log(2 * n - 1), rel=0.02)


def test_hand_worked_two_by_two():
    q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    c = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    # logits at τ=1: [[1, 0], [0, 1]]; each row: −1 + log(e¹ + e⁰) = log(1 + e⁻¹) = 0.313262.
    assert info_nce(q, c, temperature=1.0).item() == pytest.approx(0.313262, abs=1e-6)
    # Both candidates are the same item: each row's negative is an accidental hit, so the
    # partition holds the positive alone and the loss is 0.
    same = torch.tensor([7, 7])
    assert info_nce(q, c, temperature=1.0, candidate_ids=same).item() == pytest.approx(0.0)
    # log_q = [log 0.5, log 0.25]: logits [[1+0.693, 0+1.386], [0.693, 1+1.386]];
    # row 0: −1.693 + log(e^1.693 + e^1.386) = 0.551445;
    # row 1: −2.386 + log(e^0.693 + e^2.386) = 0.168848; mean 0.360146.
    log_q = torch.tensor([0.5, 0.25]).log()
    assert info_nce(q, c, temperature=1.0, log_q=log_q).item() == pytest.approx(0.360146, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The seed's numbers: which negatives the softmax weighs, and how hard.

SIMILARITIES = (0.75, 0.40, 0.10)  # a hard, a medium and an easy negative
# softmax(s/τ) over the three negatives alone, to 3 decimals.
SEED_WEIGHTS = {
    0.07: (0.993, 0.007, 0.000),
    0.1: (0.969, 0.029, 0.001),
    0.5: (0.565, 0.281, 0.154),
    1.0: (0.449, 0.316, 0.234),
}


def _negative_weights(tau: float, positive: float = 0.8) -> tuple[torch.Tensor, float]:
    """Softmax weight p_j of each negative and of the positive, read off info_nce's gradient.

    q = e0 and c_j = s_j e0 + √(1−s_j²) e_{j+1}, so sim(q, c_j) = s_j and
    ∂loss_0/∂c_j = (∂loss_0/∂s_j) q: component 0 of c_j's gradient is ∂loss_0/∂s_j = p_j/τ for
    a negative and (p_+ − 1)/τ for the positive.
    """
    sims = (positive, *SIMILARITIES)
    candidates = torch.zeros(4, 5, dtype=torch.float64)
    for j, s in enumerate(sims):
        candidates[j, 0], candidates[j, j + 1] = s, math.sqrt(1 - s * s)
    candidates.requires_grad_(True)
    queries = torch.eye(4, 5, dtype=torch.float64)
    loss = info_nce(queries, candidates, temperature=tau, normalize=False, reduction="none")[0]
    (grad,) = torch.autograd.grad(loss, candidates)
    weights = grad[:, 0] * tau
    return weights[1:], 1 + weights[0].item()


@pytest.mark.parametrize("tau", sorted(SEED_WEIGHTS))
def test_negative_weight_table_matches_seed(tau):
    negatives, _ = _negative_weights(tau)
    over_negatives = negatives / negatives.sum()
    assert [round(w, 3) for w in over_negatives.tolist()] == list(SEED_WEIGHTS[tau])


def test_negative_weights_with_positive_and_nt_logistic_ratio():
    tau = 0.5
    negatives, positive = _negative_weights(tau, positive=0.8)
    assert [round(w, 3) for w in negatives.tolist()] == [0.348, 0.173, 0.095]
    assert positive + negatives.sum().item() == pytest.approx(1.0)
    assert (negatives[0] / negatives[2]).item() == pytest.approx(3.67, abs=0.005)
    # NT-Logistic (sigmoid per pair): loss = −log σ(s₊/τ) − Σ log σ(−s_j/τ); the weight of a
    # negative is σ(s_j/τ), so the hard/easy ratio is σ(1.5)/σ(0.2) = 1.49.
    sims = torch.tensor(SIMILARITIES, dtype=torch.float64, requires_grad=True)
    logistic = -F.logsigmoid(-sims / tau).sum()
    (grad,) = torch.autograd.grad(logistic, sims)
    assert (grad[0] / grad[2]).item() == pytest.approx(1.49, abs=0.005)


@pytest.mark.parametrize("normalize", [False, True])
def test_nt_xent_anchor_gradient_equals_closed_form(normalize):
    """∂ℓ_i/∂u = (1/τ) (Σ_{k≠i} p_k v_k − v₊) for the unit anchor u, p the softmax over k≠i.

    Through normalisation u = z/‖z‖ the gradient is projected: (I − u uᵀ)/‖z‖ of the above.
    """
    n, d, tau = 5, 7, 0.3
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(2, n, d, generator=g, dtype=torch.float64)
    if not normalize:
        z1, z2 = F.normalize(z1, dim=1), F.normalize(z2, dim=1)
    z1.requires_grad_(True)
    i = 2
    # In ℓ_i the anchor z1[i] appears only as the query: its own column is masked.
    loss = nt_xent(z1, z2, temperature=tau, normalize=normalize, reduction="none")[i]
    (grad,) = torch.autograd.grad(loss, z1)

    views = F.normalize(torch.cat([z1, z2]).detach(), dim=1)
    u = views[i]
    others = torch.cat([views[:i], views[i + 1 :]])
    p = torch.softmax(others @ u / tau, dim=0)
    closed = ((p[:, None] * others).sum(0) - views[n + i]) / tau
    if normalize:
        norm = z1[i].detach().norm()
        closed = (torch.eye(d, dtype=torch.float64) - torch.outer(u, u)) @ closed / norm
    torch.testing.assert_close(grad[i], closed)


# ---------------------------------------------------------------------------------------------
# logQ.


def test_log_q_shifts_logits_after_temperature():
    g = torch.Generator().manual_seed(1)
    q, c = torch.randn(2, 9, 4, generator=g, dtype=torch.float64)
    log_q = torch.rand(9, generator=g, dtype=torch.float64).log()
    tau = 0.2
    logits = F.normalize(q, dim=1) @ F.normalize(c, dim=1).T / tau - log_q
    expected = F.cross_entropy(logits, torch.arange(9))
    torch.testing.assert_close(info_nce(q, c, temperature=tau, log_q=log_q), expected)


def test_log_q_is_clipped_at_floor():
    g = torch.Generator().manual_seed(2)
    q, c = torch.randn(2, 4, 3, generator=g)
    floor = torch.full((4,), LOG_Q_FLOOR)
    minus_inf = torch.tensor([-math.inf, LOG_Q_FLOOR, -1e9, -math.inf])
    torch.testing.assert_close(info_nce(q, c, log_q=minus_inf), info_nce(q, c, log_q=floor))
    assert LOG_Q_FLOOR == pytest.approx(math.log(1e-12))


# ---------------------------------------------------------------------------------------------
# The chunked path equals the dense one, value and gradient.


def _assert_same_gradients(actual, expected, inputs, *, rtol=0.0, atol=1e-5):
    """Gradients of two losses with respect to the same inputs agree."""
    leaves = [t for t in inputs if t.requires_grad]
    got = torch.autograd.grad(actual, leaves)
    want = torch.autograd.grad(expected, leaves)
    for leaf, a, e in zip(leaves, got, want, strict=True):
        torch.testing.assert_close(a.to(e.dtype), e, rtol=rtol, atol=atol, msg=f"{leaf.shape}")


@pytest.mark.parametrize("chunk", [1, 4, 5, 64])
def test_chunked_info_nce_equals_dense(chunk):
    b, m, d = 13, 6, 8  # 13 is a multiple of none of the chunks but 1
    g = torch.Generator().manual_seed(4)
    def leaf(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).requires_grad_(True)
    q, c, extra = leaf(b, d), leaf(b, d), leaf(m, d)
    log_q = (torch.rand(b, generator=g, dtype=torch.float64).log()).requires_grad_(True)
    extra_log_q = torch.rand(m, generator=g, dtype=torch.float64).log().requires_grad_(True)
    tau = torch.tensor(0.1, dtype=torch.float64, requires_grad=True)
    ids = torch.randint(0, 5, (b,), generator=g)
    extra_ids = torch.randint(0, 5, (m,), generator=g)
    kwargs = dict(temperature=tau, log_q=log_q, candidate_ids=ids, extra_candidates=extra,
                  extra_log_q=extra_log_q, extra_candidate_ids=extra_ids)
    # A non-uniform upstream gradient: weights per row through reduction="none".
    w = torch.rand(b, generator=g, dtype=torch.float64)
    inputs = (q, c, extra, log_q, extra_log_q, tau)
    dense = info_nce(q, c, **kwargs, reduction="none")
    chunked = info_nce(q, c, **kwargs, reduction="none", chunk_size=chunk)
    torch.testing.assert_close(chunked, dense, rtol=0, atol=1e-5)
    _assert_same_gradients((chunked * w).sum(), (dense * w).sum(), inputs)


@pytest.mark.parametrize("chunk", [3, 7])
def test_chunked_nt_xent_equals_dense(chunk):
    g = torch.Generator().manual_seed(5)
    z1, z2 = (torch.randn(11, 6, generator=g, dtype=torch.float64).requires_grad_(True)
              for _ in range(2))
    dense = nt_xent(z1, z2)
    chunked = nt_xent(z1, z2, chunk_size=chunk)
    torch.testing.assert_close(chunked, dense, rtol=0, atol=1e-5)
    _assert_same_gradients(chunked, dense, (z1, z2))


def test_chunked_float32_close_to_float64_reference():
    g = torch.Generator().manual_seed(6)
    q64, c64 = torch.randn(2, 37, 16, generator=g, dtype=torch.float64)
    q32, c32 = (x.float().requires_grad_(True) for x in (q64, c64))
    q64.requires_grad_(True)
    c64.requires_grad_(True)
    loss32 = info_nce(q32, c32, temperature=0.07, chunk_size=8)
    loss64 = info_nce(q64, c64, temperature=0.07)
    assert abs(loss32.item() - loss64.item()) < 1e-5
    got = torch.autograd.grad(loss32, (q32, c32))
    want = torch.autograd.grad(loss64, (q64, c64))
    for a, e in zip(got, want, strict=True):
        torch.testing.assert_close(a.double(), e, rtol=0, atol=1e-5)


def test_bfloat16_inputs_match_float32():
    g = torch.Generator().manual_seed(7)
    z1, z2 = torch.randn(2, 32, 16, generator=g)
    full = nt_xent(z1, z2)
    (want,) = torch.autograd.grad(nt_xent(z1.requires_grad_(True), z2), z1)
    for chunk in (None, 10):
        h1 = z1.detach().bfloat16().requires_grad_(True)
        half = nt_xent(h1, z2.bfloat16(), chunk_size=chunk)
        assert half.dtype == torch.float32  # softmax in float32 whatever the inputs
        assert abs(half.item() - full.item()) < 0.05
        (got,) = torch.autograd.grad(half, h1)
        assert got.dtype == torch.bfloat16
        assert (got.float() - want).norm() < 0.05 * want.norm()


@pytest.mark.gpu
def test_chunked_equals_dense_on_cuda():
    g = torch.Generator(device="cuda").manual_seed(8)
    z1, z2 = (torch.randn(300, 32, generator=g, device="cuda").requires_grad_(True)
              for _ in range(2))
    dense, chunked = nt_xent(z1, z2), nt_xent(z1, z2, chunk_size=128)
    torch.testing.assert_close(chunked, dense, rtol=0, atol=1e-5)
    _assert_same_gradients(chunked, dense, (z1, z2), rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Reductions and bad arguments.


def test_reductions_agree():
    g = torch.Generator().manual_seed(9)
    q, c = torch.randn(2, 6, 4, generator=g)
    rows = info_nce(q, c, reduction="none")
    assert rows.shape == (6,)
    torch.testing.assert_close(info_nce(q, c, reduction="sum"), rows.sum())
    torch.testing.assert_close(info_nce(q, c), rows.mean())
    assert nt_xent(q, c, reduction="none").shape == (12,)


def _bad(**overrides):
    args = {"queries": torch.randn(4, 3), "candidates": torch.randn(4, 3)}
    args.update(overrides)
    return args


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (_bad(candidates=torch.randn(5, 3)), "one row each"),
        (_bad(candidates=torch.randn(4, 2)), "differ in dimension"),
        (_bad(queries=torch.randn(4)), "shape"),
        (_bad(queries=torch.randn(0, 3), candidates=torch.randn(0, 3)), "rows > 0"),
        (_bad(queries=torch.ones(4, 3, dtype=torch.long)), "floating-point"),
        (_bad(candidates=torch.randn(4, 3, dtype=torch.float64)), "share dtype"),
        (_bad(temperature=0.0), "temperature"),
        (_bad(temperature=-0.1), "temperature"),
        (_bad(temperature=torch.tensor([0.1, 0.2])), "scalar"),
        (_bad(queries=torch.tensor([[math.nan, 0, 0]] * 4)), "queries contains NaN"),
        (_bad(candidates=torch.full((4, 3), math.inf)), "candidates contains NaN"),
        (_bad(log_q=torch.zeros(3)), r"log_q must have shape \(4,\)"),
        (_bad(log_q=torch.tensor([0.0, math.nan, 0.0, 0.0])), "log_q contains NaN"),
        (_bad(log_q=torch.zeros(4, dtype=torch.long)), "floating point"),
        (_bad(candidate_ids=torch.zeros(2, dtype=torch.long)), "candidate_ids"),
        (_bad(extra_log_q=torch.zeros(2)), "need extra_candidates"),
        (_bad(extra_candidates=torch.randn(2, 5)), "differ in dimension"),
        (_bad(extra_candidates=torch.randn(2, 3), extra_log_q=torch.zeros(3)), "extra_log_q"),
        (_bad(extra_candidates=torch.randn(2, 3), extra_candidate_ids=torch.zeros(2)),
         "needs candidate_ids"),
        (_bad(chunk_size=0), "chunk_size"),
        (_bad(chunk_size=2.5), "chunk_size"),
        (_bad(reduction="avg"), "reduction"),
    ],
)
def test_info_nce_rejects_bad_arguments(args, message):
    with pytest.raises(ValueError, match=message):
        info_nce(**args)


def test_nt_xent_rejects_bad_arguments():
    with pytest.raises(ValueError, match="one row each"):
        nt_xent(torch.randn(4, 3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="temperature"):
        nt_xent(torch.randn(4, 3), torch.randn(4, 3), temperature=0)
    with pytest.raises(ValueError, match="z2 contains NaN"):
        nt_xent(torch.randn(4, 3), torch.full((4, 3), math.nan))


# ---------------------------------------------------------------------------------------------
# The full catalog softmax.


def naive_catalog_softmax(q, catalog, positives, tau, normalize=True, bias=None) -> float:
    """Mult-VAE's multinomial log-likelihood (Liang et al. 2018, eq. 2) of one positive per
    row, every catalog item in the denominator, each logit less its item's bias."""
    q, catalog = q.tolist(), catalog.tolist()
    bias = [0.0] * len(catalog) if bias is None else bias.tolist()
    if normalize:
        q, catalog = [_unit(v) for v in q], [_unit(v) for v in catalog]
    total = 0.0
    for i, row in enumerate(q):
        logits = [_dot(row, item) / tau - b for item, b in zip(catalog, bias, strict=True)]
        total += -logits[int(positives[i])] + math.log(sum(math.exp(x) for x in logits))
    return total / len(q)


@settings(max_examples=25, deadline=None)
@given(b=st.integers(1, 6), c=st.integers(1, 9), d=st.integers(1, 5),
       tau=st.floats(0.05, 1.0), normalize=st.booleans(), biased=st.booleans(),
       seed=st.integers(0, 2**16))
def test_catalog_softmax_equals_naive_twin(b, c, d, tau, normalize, biased, seed):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, d, generator=g, dtype=torch.float64)
    catalog = torch.randn(c, d, generator=g, dtype=torch.float64)
    positives = torch.randint(0, c, (b,), generator=g)
    bias = 3 * torch.randn(c, generator=g, dtype=torch.float64) if biased else None
    got = catalog_softmax(q, catalog, positives, temperature=tau, normalize=normalize, bias=bias)
    assert got.item() == pytest.approx(
        naive_catalog_softmax(q, catalog, positives, tau, normalize, bias), rel=1e-9, abs=1e-12)


def test_catalog_softmax_checks_its_bias():
    q, c = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"bias must be \(5,\)"):
        catalog_softmax(q, c, torch.zeros(3, dtype=torch.long), bias=torch.zeros(4))
    with pytest.raises(ValueError, match="bias contains"):
        catalog_softmax(q, c, torch.zeros(3, dtype=torch.long),
                        bias=torch.tensor([0.0, math.nan, 0.0, 0.0, 0.0]))


def test_catalog_softmax_is_info_nce_when_the_catalog_is_the_batch():
    """In-batch candidates with row i's positive at column i: the two losses coincide."""
    g = torch.Generator().manual_seed(0)
    q, c = torch.randn(7, 4, generator=g), torch.randn(7, 4, generator=g)
    assert catalog_softmax(q, c, torch.arange(7), temperature=0.1).item() == pytest.approx(
        info_nce(q, c, temperature=0.1).item(), rel=1e-6)


@pytest.mark.parametrize("chunk", [1, 3, 64])
def test_chunked_catalog_softmax_equals_dense(chunk):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(10, 6, generator=g, dtype=torch.float64, requires_grad=True)
    catalog = torch.randn(25, 6, generator=g, dtype=torch.float64, requires_grad=True)
    positives = torch.randint(0, 25, (10,), generator=g)
    tau = torch.tensor(0.2, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(25, generator=g, dtype=torch.float64, requires_grad=True)
    dense = catalog_softmax(q, catalog, positives, temperature=tau, reduction="none", bias=bias)
    grads = torch.autograd.grad(dense.sum(), (q, catalog, tau, bias))
    chunked = catalog_softmax(q, catalog, positives, temperature=tau, chunk_size=chunk,
                              reduction="none", bias=bias)
    torch.testing.assert_close(chunked, dense)
    for got, want in zip(torch.autograd.grad(chunked.sum(), (q, catalog, tau, bias)), grads,
                         strict=True):
        torch.testing.assert_close(got, want)


def test_catalog_softmax_rejects_bad_arguments():
    q, c = torch.randn(3, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match="positives must be"):
        catalog_softmax(q, c, torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="differ in dimension"):
        catalog_softmax(q, torch.randn(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="finite"):
        catalog_softmax(q, c.clone().fill_(float("nan")), torch.zeros(3, dtype=torch.long))
