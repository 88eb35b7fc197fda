"""fit(): the loss it minimises (logQ, accidental hits, mixed negatives), validation and early
stopping, exact resume, two gloo processes, and the exported vectors."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import twotower.train as train_module
from twotower.contrastive import catalog_softmax
from twotower.data import PrepareConfig, prepare
from twotower.evaluate import load_queries
from twotower.frequency import log_q_from_counts
from twotower.inputs import load_training
from twotower.synthetic import ShopConfig, make_shop
from twotower.towers import TowerConfig
from twotower.train import TrainConfig, export_vectors, fit, user_vectors_for
from twotower.vectors import Vectors, read_vectors

TOWER = TowerConfig(dim=8, hidden_dim=16, id_dim=8, image_dim=4, attribute_dim=4)
TINY = TrainConfig(epochs=2, batch_size=64, lr=5e-3, val_k=10, max_history=5, tower=TOWER,
                   max_val_users=None, softmax="sampled")
FULL = dataclasses.replace(TINY, softmax="full")


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory) -> Path:
    """A small synthetic shop, prepared with the temporal protocol, plus random 'image h'."""
    root = tmp_path_factory.mktemp("shop")
    shop = make_shop(ShopConfig(num_items=80, num_users=60, num_interactions=3000, image_size=8))
    shop.interactions.to_parquet(root / "log.parquet")
    shop.catalog.to_parquet(root / "catalog.parquet")
    prepare(root / "log.parquet", root / "prepare",
            PrepareConfig(min_user_interactions=3, min_item_interactions=3))
    return root


def _images(shop_dir: Path, dim: int = 6) -> Vectors:
    ids = pl.read_parquet(shop_dir / "catalog.parquet")["item_id"].to_numpy().astype(str)
    rng = np.random.default_rng(1)
    return Vectors(ids=ids, vectors=rng.normal(size=(len(ids), dim)).astype(np.float32))


class _Spy:
    """Wraps info_nce to record each call's keyword arguments."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        real = train_module.info_nce

        def spy(queries, candidates, **kwargs):
            self.calls.append({"queries": queries, "candidates": candidates, **kwargs})
            return real(queries, candidates, **kwargs)

        monkeypatch.setattr(train_module, "info_nce", spy)


def test_training_lowers_the_loss_and_keeps_the_best_validation_epoch(shop_dir):
    logged: list[tuple[dict, int]] = []
    cfg = dataclasses.replace(TINY, epochs=4)
    result = fit(shop_dir / "prepare", cfg, embeddings=_images(shop_dir),
                 catalog=pl.read_parquet(shop_dir / "catalog.parquet").to_pandas(),
                 attributes=("category", "pattern"), log=lambda m, s: logged.append((m, s)),
                 progress=False)
    steps = [m["loss"] for m, _ in logged if "loss" in m]
    rows = len(load_training(shop_dir / "prepare"))
    assert len(steps) == 4 * (rows // 64)
    first, last = np.mean(steps[:5]), np.mean(steps[-5:])
    assert last < first - 0.2, (first, last)
    epochs = [m for m, _ in logged if "epoch/val_recall_at_10" in m]
    assert len(epochs) == 4 == len(result.history)
    recalls = [h["val_recall_at_10"] for h in result.history]
    assert result.best_epoch == int(np.argmax(recalls)) + 1
    assert max(recalls) > 10 / 80  # better than a random top 10 of 80 items


def test_counts_logq_is_the_in_batch_probability_and_hits_are_masked(shop_dir, monkeypatch):
    spy = _Spy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1), progress=False)
    rows = load_training(shop_dir / "prepare")
    expected = torch.as_tensor(log_q_from_counts(rows.item_counts, 64), dtype=torch.float32)
    call = spy.calls[0]
    assert torch.equal(call["log_q"], expected[call["candidate_ids"]])
    assert call["candidate_ids"].shape == (64,)  # accidental hits masked by item id
    assert call["extra_candidates"] is None and not call["normalize"]


def test_logq_none_and_hits_unmasked_pass_nothing(shop_dir, monkeypatch):
    spy = _Spy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, logq="none",
                                                  mask_accidental_hits=False), progress=False)
    assert spy.calls[0]["log_q"] is None and spy.calls[0]["candidate_ids"] is None


def test_streaming_logq_comes_from_the_estimator(shop_dir, monkeypatch):
    spy = _Spy(monkeypatch)
    result = fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=2, logq="streaming"),
                 progress=False)
    first = spy.calls[0]["log_q"]
    # After one update (step 0) every present item's gap is 1: q̂ = 1.
    assert torch.equal(first, torch.zeros_like(first))
    assert (spy.calls[-1]["log_q"] < 0).any()
    assert result.log_q.shape == (load_training(shop_dir / "prepare").num_items,)


def test_mixed_negatives_add_uniform_items_with_their_own_logq(shop_dir, monkeypatch):
    spy = _Spy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, mixed_negatives=16),
        progress=False)
    call = spy.calls[0]
    n_items = load_training(shop_dir / "prepare").num_items
    assert call["extra_candidates"].shape == (16, TOWER.dim)
    q = 1 - (1 - 1 / n_items) ** 16
    assert torch.allclose(call["extra_log_q"], torch.full((16,), math.log(q)))
    assert call["extra_candidate_ids"].shape == (16,)
    assert (call["extra_candidate_ids"] < n_items).all()


@pytest.mark.parametrize("logq", ["none", "counts", "streaming"])
def test_each_logq_corrects_the_mixed_negatives_and_checkpoints_only_learned_state(
        shop_dir, tmp_path, monkeypatch, logq):
    spy = _Spy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, mixed_negatives=4, logq=logq,
                                                  checkpoint_dir=str(tmp_path)), progress=False)
    assert (spy.calls[0]["extra_log_q"] is None) == (logq == "none")
    estimator = torch.load(tmp_path / "last.pt", weights_only=True)["estimator"]
    if logq != "streaming":
        assert estimator is None  # counts are recomputed from the data, not saved
    else:
        assert sorted(estimator) == ["_extra_state", "delta", "last_step"]
        assert estimator["_extra_state"]["step"] == len(spy.calls) - 1


def test_learned_temperature_moves_and_stays_in_range(shop_dir):
    logged = []
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, learn_temperature=True,
                                                  temperature=0.5, lr=5e-2),
        log=lambda m, s: logged.append(m), progress=False)
    taus = [m["temperature"] for m in logged if "temperature" in m]
    assert taus[0] == pytest.approx(0.5, rel=1e-6) and taus[-1] != taus[0]
    assert all(0.01 - 1e-6 <= t <= 1.0 + 1e-6 for t in taus)


@pytest.mark.parametrize("ema", [0.0, 0.9])
def test_kill_and_resume_equals_an_uninterrupted_run(shop_dir, tmp_path, ema):
    cfg = dataclasses.replace(TINY, epochs=3, mixed_negatives=4, logq="streaming", ema=ema,
                              tower=dataclasses.replace(TOWER, id_dropout=0.2),
                              checkpoint_dir=str(tmp_path / "straight"))
    straight = fit(shop_dir / "prepare", cfg, progress=False)
    steps = len(load_training(shop_dir / "prepare")) // cfg.batch_size

    def killed_in_epoch_two(metrics, step):
        if "loss" in metrics and step > steps + 1:
            raise KeyboardInterrupt("killed")

    cfg = dataclasses.replace(cfg, checkpoint_dir=str(tmp_path / "resumed"))
    with pytest.raises(KeyboardInterrupt):
        fit(shop_dir / "prepare", cfg, log=killed_in_epoch_two, progress=False)
    saved = torch.load(tmp_path / "resumed" / "last.pt", weights_only=True)
    assert saved["state"]["epoch"] == 1
    resumed = fit(shop_dir / "prepare", cfg, progress=False)
    assert resumed.history == straight.history
    assert resumed.best_epoch == straight.best_epoch
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert sorted(p.name for p in (tmp_path / "resumed").iterdir()) == ["last.pt"]


@pytest.mark.parametrize("validated", [True, False])
def test_ema_gives_the_debiased_moving_average_of_the_weights_after_every_step(
        shop_dir, monkeypatch, validated):
    steps, real = [], torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        out = real(self, *args, **kwargs)
        steps.append([p.detach().clone() for p in self.param_groups[0]["params"]])
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", step)
    if not validated:
        monkeypatch.setattr(train_module, "validation_queries", lambda *a: None)
    decay = 0.8
    result = fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, ema=decay),
                 progress=False)
    n = len(steps)
    share = [decay ** (n - 1 - k) for k in range(n)]  # step k's weight, before normalising
    average = [sum(s * w[j] for s, w in zip(share, steps, strict=True)) / sum(share)
               for j in range(len(steps[0]))]
    got = list(result.model.parameters())
    assert len(steps) > 3 and len(got) == len(average)
    for a, g in zip(average, got, strict=True):
        torch.testing.assert_close(g, a, rtol=1e-5, atol=1e-6)
    assert any(not torch.allclose(g, last) for g, last in zip(got, steps[-1], strict=True))


def test_resume_refuses_a_checkpoint_of_another_config(shop_dir, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1, checkpoint_dir=str(tmp_path))
    fit(shop_dir / "prepare", cfg, progress=False)
    more = fit(shop_dir / "prepare", dataclasses.replace(cfg, epochs=2), progress=False)
    assert [h["epoch"] for h in more.history] == [1, 2]  # more epochs: resumed, not refused
    with pytest.raises(ValueError, match=r"trained with tower\.dim=8, not 16"):
        fit(shop_dir / "prepare", dataclasses.replace(
            cfg, tower=dataclasses.replace(TOWER, dim=16)), progress=False)


def test_a_non_finite_loss_stops_with_the_step(shop_dir, monkeypatch):
    monkeypatch.setattr(train_module, "info_nce",
                        lambda q, c, **kw: (q * c).sum() * float("nan"))
    with pytest.raises(FloatingPointError, match=r"at step 0 \(epoch 1\)"):
        fit(shop_dir / "prepare", TINY, progress=False)


def test_early_stopping_after_patience_epochs_without_progress(shop_dir, monkeypatch):
    scores = iter([0.3, 0.2, 0.25, 0.5, 0.9])
    monkeypatch.setattr(train_module, "validate", lambda *a: (next(scores), 0.0, 10))
    result = fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=5, patience=2),
                 progress=False)
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.best_epoch == 1


def test_bad_configs_are_refused():
    with pytest.raises(ValueError, match="logq must be"):
        TrainConfig(logq="sampled")
    with pytest.raises(ValueError, match="temperature must be positive"):
        TrainConfig(temperature=0)
    with pytest.raises(ValueError, match="batch_size must be ≥ 1"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="content_loss must be"):
        TrainConfig(content_loss=-1.0)
    for ema in (-0.1, 1.0):
        with pytest.raises(ValueError, match=r"ema must be in \[0, 1\)"):
            TrainConfig(ema=ema)


def test_exported_vectors_match_the_model(shop_dir, tmp_path):
    cfg = dataclasses.replace(TINY, epochs=1)
    result = fit(shop_dir / "prepare", cfg, progress=False)
    paths = export_vectors(result.model, shop_dir / "prepare", tmp_path, max_history=5,
                           metadata={"checkpoint": "none"})
    items = read_vectors(paths["items"])
    queries = load_queries(shop_dir / "prepare", "test")
    assert items.ids.tolist() == queries.item_ids.tolist()
    assert np.allclose(np.linalg.norm(items.vectors, axis=1), 1, atol=1e-5)
    assert np.allclose(items.vectors, result.model.item_vectors().numpy(), atol=1e-6)
    test_users = read_vectors(paths["test"], id_column="user_id")
    assert test_users.ids.tolist() == queries.user_id.tolist()
    assert np.allclose(test_users.vectors, user_vectors_for(result.model, 5)(queries), atol=1e-6)
    assert test_users.metadata["checkpoint"] == "none" and test_users.metadata["dim"] == 8
    everyone = read_vectors(paths["users"], id_column="user_id")
    assert len(everyone.ids) == pl.read_parquet(shop_dir / "prepare" / "users.parquet").height


def test_new_products_without_interactions_get_exported_vectors(shop_dir, tmp_path):
    images = _images(shop_dir)
    new_ids = np.array(["brand-new-1", "brand-new-2"])
    rng = np.random.default_rng(2)
    images = Vectors(ids=np.concatenate([images.ids, new_ids]), vectors=np.concatenate(
        [images.vectors, rng.normal(size=(2, images.vectors.shape[1])).astype(np.float32)]))
    result = fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1), embeddings=images,
                 new_products=True, progress=False)
    queries = load_queries(shop_dir / "prepare", "test")
    assert result.model.item_ids[:len(queries.item_ids)].tolist() == queries.item_ids.tolist()
    assert set(new_ids) <= set(result.model.item_ids[len(queries.item_ids):])
    paths = export_vectors(result.model, shop_dir / "prepare", tmp_path, max_history=5)
    items = read_vectors(paths["items"])
    assert set(new_ids) <= set(items.ids) and len(items.ids) == len(result.model.item_ids)
    assert "val_recall_at_10" in result.history[0]  # validation ranks the prepared items


# -------------------------------------------------------------------- two gloo processes
def _ddp_worker(r: int, init_file: str, prepared: str, out_dir: str, cfg: TrainConfig) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=r, world_size=2)
    try:
        losses = []
        result = fit(prepared, cfg, log=lambda m, s: losses.append(m.get("loss")),
                     progress=False)
        weights = {k: v.detach() for k, v in result.model.named_parameters()}
        torch.save({"weights": weights, "losses": [x for x in losses if x is not None]},
                   Path(out_dir) / f"rank{r}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_gloo_processes_train_like_one_process_on_the_joined_batch(shop_dir, tmp_path):
    if not dist.is_available():
        pytest.skip("torch was built without torch.distributed")
    cfg = dataclasses.replace(TINY, epochs=1, mixed_negatives=0,
                              tower=dataclasses.replace(TOWER, head="linear", id_dropout=0.0),
                              checkpoint_dir=str(tmp_path / "ckpt"))
    mp.spawn(_ddp_worker, args=(str(tmp_path / "init"), str(shop_dir / "prepare"),
                                str(tmp_path), cfg), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    for name, value in ranks[0]["weights"].items():
        assert torch.equal(value, ranks[1]["weights"][name]), name
    single = []
    fit(shop_dir / "prepare", dataclasses.replace(cfg, checkpoint_dir=None),
        log=lambda m, s: single.append(m.get("loss")), progress=False)
    single = [x for x in single if x is not None]
    # Each rank holds 32 rows; with the other rank's 32 gathered as negatives the loss is that
    # of one process on the 64 rows, at the first step and (gradients averaged) after it.
    assert ranks[0]["losses"][0] == pytest.approx(single[0], rel=1e-5)
    assert np.allclose(ranks[0]["losses"], single, rtol=1e-3)
    assert (tmp_path / "ckpt" / "last.pt").exists()


@pytest.mark.gpu
def test_cuda_training_in_bf16(shop_dir):
    result = fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=3, device="cuda"),
                 embeddings=_images(shop_dir), progress=False)
    assert next(result.model.parameters()).device.type == "cuda"
    assert result.history[-1]["loss"] < result.history[0]["loss"]


def test_user_id_embedding_is_chosen_from_the_protocol(shop_dir, tmp_path):
    holdout = prepare(shop_dir / "log.parquet", tmp_path / "holdout", PrepareConfig(
        protocol="holdout_users", min_user_interactions=3, min_item_interactions=3))
    tiny = dataclasses.replace(TINY, epochs=1)
    assert TINY.tower.user_id is None  # the default: decided by the split
    assert fit(shop_dir / "prepare", tiny, progress=False).model.config.user_id is True
    found = fit(holdout, tiny, progress=False).model
    assert found.config.user_id is False and found.user_tower.ids is None
    forced = dataclasses.replace(tiny, tower=dataclasses.replace(TOWER, user_id=True))
    assert fit(holdout, forced, progress=False).model.user_tower.ids is not None


def _weighted_log(shop_dir: Path, tmp_path: Path, weights: dict[str, float]) -> Path:
    """The shop's log prepared with event weights (every event a view or a purchase)."""
    log = pl.read_parquet(shop_dir / "log.parquet")
    log = log.with_columns(event=pl.when(pl.int_range(pl.len()) % 3 == 0)
                           .then(pl.lit("purchase")).otherwise(pl.lit("view")))
    log.write_parquet(tmp_path / "events.parquet")
    name = "_".join(f"{k}{v}" for k, v in weights.items())
    return prepare(tmp_path / "events.parquet", tmp_path / name, PrepareConfig(
        min_user_interactions=3, min_item_interactions=3, event_weights=weights))


def test_row_weights_weigh_the_loss(shop_dir, tmp_path):
    losses = {}
    for name, weights, use in (("ones", {"view": 1.0, "purchase": 1.0}, True),
                               ("doubled", {"view": 2.0, "purchase": 2.0}, True),
                               ("purchases count 5x", {"view": 1.0, "purchase": 5.0}, True),
                               ("ignored", {"view": 1.0, "purchase": 5.0}, False)):
        prepared = _weighted_log(shop_dir, tmp_path, weights)
        cfg = dataclasses.replace(TINY, epochs=1, use_weights=use)
        logged: list[float] = []
        fit(prepared, cfg, log=lambda m, s, out=logged: out.append(m["loss"]) if "loss" in m
            else None, progress=False)
        losses[name] = logged
    # A weighted mean: scaling every weight changes nothing; unequal weights change training.
    np.testing.assert_allclose(losses["doubled"], losses["ones"], rtol=1e-6)
    assert losses["purchases count 5x"][1:] != pytest.approx(losses["ones"][1:], rel=1e-3)
    np.testing.assert_allclose(losses["ignored"], losses["ones"], rtol=1e-6)


def test_weighted_mean_of_zero_weights_is_zero():
    losses = torch.tensor([1.0, 2.0, 4.0])
    assert train_module._weighted_mean(losses, torch.tensor([1.0, 0.0, 3.0])).item() == \
        pytest.approx((1.0 + 12.0) / 4.0)
    assert train_module._weighted_mean(losses, torch.zeros(3)).item() == 0.0



class _CatalogSpy:
    """Wraps catalog_softmax to record each call's arguments."""

    def __init__(self, monkeypatch):
        self.calls: list[dict] = []
        real = train_module.catalog_softmax

        def spy(queries, catalog, positives, **kwargs):
            self.calls.append({"queries": queries, "catalog": catalog, "positives": positives,
                               **kwargs})
            return real(queries, catalog, positives, **kwargs)

        monkeypatch.setattr(train_module, "catalog_softmax", spy)


def test_full_softmax_scores_every_warm_item_with_the_row_positive(shop_dir, monkeypatch):
    spy, sampled = _CatalogSpy(monkeypatch), _Spy(monkeypatch)
    result = fit(shop_dir / "prepare", dataclasses.replace(FULL, epochs=1, mixed_negatives=8),
                 progress=False)
    rows = load_training(shop_dir / "prepare")
    warm = np.flatnonzero(rows.item_counts > 0)
    assert len(spy.calls) == len(rows) // 64 and not sampled.calls  # no sampled loss at all
    call = spy.calls[0]
    assert call["catalog"].shape == (len(warm), TOWER.dim) and not call["normalize"]
    # Column c of the catalog is warm item warm[c]: the positives map back to the rows' items.
    order = np.random.default_rng([TINY.seed, 1]).permutation(len(rows))
    assert np.array_equal(warm[call["positives"].numpy()], rows.item[order[:64]])
    assert result.log_q is not None  # counts log q is still reported, unused by the loss


def test_auto_softmax_is_full_up_to_the_size_limit(shop_dir, monkeypatch):
    auto = dataclasses.replace(TINY, epochs=1, softmax="auto")
    spy, sampled = _CatalogSpy(monkeypatch), _Spy(monkeypatch)
    fit(shop_dir / "prepare", auto, progress=False)
    assert spy.calls and not sampled.calls
    monkeypatch.setattr(train_module, "FULL_SOFTMAX_ITEMS", 10)
    spy, sampled = _CatalogSpy(monkeypatch), _Spy(monkeypatch)
    fit(shop_dir / "prepare", auto, progress=False)
    assert sampled.calls and not spy.calls


def test_the_content_loss_adds_the_softmax_of_the_content_only_vectors(shop_dir, monkeypatch):
    spy, logged = _CatalogSpy(monkeypatch), []
    cfg = dataclasses.replace(FULL, epochs=1, content_loss=0.5, use_weights=False)
    fit(shop_dir / "prepare", cfg, embeddings=_images(shop_dir), progress=False,
        log=lambda m, s: logged.append(m["loss"]) if "loss" in m else None)
    steps = len(load_training(shop_dir / "prepare")) // 64
    assert len(spy.calls) == 2 * steps  # per step: the full vectors, then the content-only ones
    full, content = spy.calls[0], spy.calls[1]
    assert torch.equal(full["positives"], content["positives"])
    assert torch.equal(full["queries"], content["queries"])
    assert not torch.allclose(full["catalog"], content["catalog"])
    counts = load_training(shop_dir / "prepare").item_counts
    warm = counts[counts > 0]  # the catalog's columns, in item order
    assert full["bias"] is None  # the popularity prior is the content term's alone
    np.testing.assert_allclose(content["bias"].numpy(), -np.log(warm / counts.sum()), rtol=1e-6)

    per_row = [catalog_softmax(c["queries"].detach(), c["catalog"].detach(), c["positives"],
                               **{k: v for k, v in c.items()
                                  if k not in ("queries", "catalog", "positives")})
               for c in (full, content)]
    assert logged[0] == pytest.approx((per_row[0] + 0.5 * per_row[1]).mean().item(), rel=1e-5)


def test_without_content_inputs_or_weight_there_is_one_loss_term(shop_dir, monkeypatch):
    steps = len(load_training(shop_dir / "prepare")) // 64
    spy = _CatalogSpy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(FULL, epochs=1), progress=False)  # id-only
    assert len(spy.calls) == steps
    spy = _CatalogSpy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(FULL, epochs=1, content_loss=0.0),
        embeddings=_images(shop_dir), progress=False)
    assert len(spy.calls) == steps
    sampled = _Spy(monkeypatch)
    fit(shop_dir / "prepare", dataclasses.replace(TINY, epochs=1, content_prior=False),
        embeddings=_images(shop_dir), progress=False)
    assert len(sampled.calls) == 2 * steps
    assert torch.equal(sampled.calls[0]["log_q"], sampled.calls[1]["log_q"])


@pytest.mark.parametrize("logq", ["counts", "none"])
def test_the_sampled_content_loss_adds_the_log_popularity_to_the_logq_correction(
        shop_dir, monkeypatch, logq):
    """The content term's candidates get log p(i) added to their logits: with counts' log q
    that leaves a shift the softmax ignores, without a correction it is the prior itself."""
    sampled = _Spy(monkeypatch)
    cfg = dataclasses.replace(TINY, epochs=1, logq=logq, mixed_negatives=7)
    fit(shop_dir / "prepare", cfg, embeddings=_images(shop_dir), progress=False)
    counts = load_training(shop_dir / "prepare").item_counts
    log_p = torch.log(torch.as_tensor(np.maximum(counts, 1) / counts.sum()))
    full, content = sampled.calls[0], sampled.calls[1]
    items, extra = content["candidate_ids"], content["extra_candidate_ids"]
    zero = torch.zeros(len(items), dtype=log_p.dtype)
    torch.testing.assert_close(content["log_q"].double(),
                               (zero if full["log_q"] is None else full["log_q"].double())
                               - log_p[items])
    base = full["extra_log_q"]
    torch.testing.assert_close(content["extra_log_q"].double(),
                               (torch.zeros(len(extra), dtype=log_p.dtype) if base is None
                                else base.double()) - log_p[extra])


def test_the_popularity_prior_keeps_popularity_out_of_the_content_vectors(shop_dir):
    """Random 'image h' tells nothing of taste but tells the items apart, so a content path
    fit to the plain softmax learns each warm item's popularity from it; with the prior in its
    loss the content scores follow popularity far less."""
    rows = load_training(shop_dir / "prepare")
    warm = np.flatnonzero(rows.item_counts > 0)
    everyone = np.arange(len(rows))

    def tracking(prior: bool) -> float:
        cfg = dataclasses.replace(FULL, epochs=6, content_prior=prior, patience=6)
        model = fit(shop_dir / "prepare", cfg, embeddings=_images(shop_dir, 16),
                    progress=False).model
        with torch.no_grad():
            users = model.user_vectors(torch.as_tensor(rows.user),
                                       torch.as_tensor(rows.histories(everyone, 5)))
            score = (users @ model.item_tower.content(torch.as_tensor(warm)).T).mean(0)
        return float(np.corrcoef(score.numpy(), np.log(rows.item_counts[warm]))[0, 1])

    plain, with_prior = tracking(False), tracking(True)
    assert plain > 0.5 and with_prior < plain - 0.3
