"""The towers: shapes, unit norm, every parameter gets a gradient, the unknown rows, pooling."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from twotower.towers import PAD, ItemFeatures, TowerConfig, TwoTower, bounded, pad_histories

ITEMS, U, H, L = 12, 7, 5, 4


def _features(images: bool = True, attributes: bool = True) -> ItemFeatures:
    rng = np.random.default_rng(0)
    warm = np.ones(ITEMS, bool)
    warm[-2:] = False  # two cold items
    has_image = np.ones(ITEMS, bool)
    has_image[0] = False
    return ItemFeatures(
        warm=warm,
        images=rng.normal(size=(ITEMS, H)).astype(np.float32) * has_image[:, None] if images
        else None,
        has_image=has_image if images else None,
        attributes={"category": rng.integers(0, 3, ITEMS), "brand": rng.integers(0, 5, ITEMS)}
        if attributes else {},
    )


def _batch(b: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    history = torch.randint(0, ITEMS, (b, L), generator=g)
    history[0] = PAD  # a user without history
    history[1, :2] = PAD
    return {"user_index": torch.tensor([0, 1, 2, 3, -1, 6])[:b], "history": history,
            "item_index": torch.randint(0, ITEMS, (b,), generator=g)}


VARIANTS = {
    "everything": (TowerConfig(dim=8, hidden_dim=16, id_dim=4, image_dim=4, attribute_dim=3),
                   dict(images=True, attributes=True)),
    "ids only": (TowerConfig(dim=8, hidden_dim=16, id_dim=4), dict(images=False,
                                                                    attributes=False)),
    "image only, no user id, linear head": (
        TowerConfig(dim=8, hidden_dim=16, image_dim=4, item_id=False, user_id=False,
                    head="linear"), dict(images=True, attributes=False)),
    "attributes only, no head": (
        TowerConfig(dim=16, hidden_dim=16, item_id=False, head="none"),
        dict(images=False, attributes=True)),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_shapes_unit_norm_and_every_parameter_gets_a_gradient(name):
    config, which = VARIANTS[name]
    torch.manual_seed(0)
    model = TwoTower(np.ones(U, bool), _features(**which), config)
    users, items, _ = model(_batch())
    assert users.shape == items.shape == (6, config.dim)
    assert torch.allclose(users.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.allclose(items.norm(dim=1), torch.ones(6), atol=1e-5)
    assert torch.isfinite(users).all() and torch.isfinite(items).all()
    (users * items).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not missing


def test_the_frozen_image_embedding_is_a_buffer_not_a_parameter():
    model = TwoTower(np.ones(U, bool), _features(), VARIANTS["everything"][0])
    assert "item_tower.images" in dict(model.named_buffers())
    assert all("images" not in n for n, _ in model.named_parameters())


def test_cold_items_and_unknown_users_share_the_unknown_rows():
    torch.manual_seed(0)
    users_warm = np.ones(U, bool)
    users_warm[3] = False
    config = TowerConfig(dim=8, hidden_dim=16, id_dim=4)
    model = TwoTower(users_warm, _features(images=False, attributes=False), config).eval()
    cold_a, cold_b = model.item_tower(torch.tensor([ITEMS - 2, ITEMS - 1]))
    assert torch.equal(cold_a, cold_b)  # no content: both get the unknown id row
    history = torch.full((3, L), PAD)
    a, b, c = model.user_tower(torch.tensor([3, -1, 0]), history)
    assert torch.equal(a, b) and not torch.allclose(a, c)  # cold user 3 = an unknown user


def test_a_cold_item_gets_its_vector_from_its_content_alone():
    torch.manual_seed(0)
    model = TwoTower(np.ones(U, bool), _features(), VARIANTS["everything"][0]).eval()
    cold = torch.tensor([ITEMS - 2, ITEMS - 1])  # no interactions, so no id row of their own
    before = model.item_tower(cold)
    assert torch.allclose(before, model.item_tower.content(cold), atol=1e-6)
    assert not torch.allclose(before[0], before[1])  # different images, different vectors
    with torch.no_grad():
        model.item_tower.ids.weight.normal_()  # every id row, the unknown one included
    assert torch.equal(model.item_tower(cold), before)
    warm = torch.tensor([1, 2])
    assert not torch.allclose(model.item_tower(warm), model.item_tower.content(warm))


def test_warm_vectors_are_the_content_plus_the_id_residual_and_content_ignores_ids():
    torch.manual_seed(0)
    model = TwoTower(np.ones(U, bool), _features(), VARIANTS["everything"][0]).eval()
    tower, items = model.item_tower, torch.arange(ITEMS - 2)
    full, content = tower.both(items)
    raw = tower.content_head(tower.content_mlp(torch.cat(tower._content_inputs(items), dim=-1)))
    unit = torch.nn.functional.normalize(raw)
    residual = tower.id_head(tower.id_mlp(tower.ids.weight[items + 1]))
    length = residual.norm(dim=1, keepdim=True)
    expected = torch.nn.functional.normalize(unit + torch.tanh(length) * residual / length)
    assert torch.allclose(full, expected, atol=1e-6)
    assert torch.allclose(content, unit, atol=1e-6)
    assert ((full * content).sum(dim=1) > math.cos(math.pi / 4)).all()  # within 45°
    assert model(_batch())[2] is not None
    ids_only = TwoTower(np.ones(U, bool), _features(images=False, attributes=False),
                        VARIANTS["ids only"][0])
    assert ids_only(_batch())[2] is None  # nothing to train a content path on
    image_only = TwoTower(np.ones(U, bool), _features(), VARIANTS[
        "image only, no user id, linear head"][0])
    assert image_only(_batch())[2] is None  # its item vectors are the content vectors


def test_bounded_keeps_the_direction_and_a_length_below_one():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-3, 0.0], [0.0, -2.0]])
    out = bounded(x)
    lengths = out.norm(dim=1)
    assert torch.allclose(lengths, torch.tanh(x.norm(dim=1)))
    assert (lengths < 1).all() and torch.equal(out[1], torch.zeros(2))
    assert torch.allclose(out[0] / lengths[0], x[0] / 5.0)


def test_id_dropout_acts_in_training_only():
    torch.manual_seed(0)
    config = TowerConfig(dim=8, hidden_dim=16, id_dim=4, id_dropout=0.5)
    model = TwoTower(np.ones(U, bool), _features(images=False, attributes=False), config)
    items = torch.zeros(200, dtype=torch.long)
    model.train()
    features = model.item_tower.features(items)
    unknown = model.item_tower.ids.weight[0]
    dropped = (features == unknown).all(dim=1).float().mean()
    assert 0.35 < dropped < 0.65
    model.eval()
    assert not (model.item_tower.features(items) == unknown).all(dim=1).any()


def test_id_dropout_draws_from_the_generator_it_is_given():
    config = TowerConfig(dim=8, hidden_dim=16, id_dim=4, image_dim=4, attribute_dim=3,
                         id_dropout=0.5)
    torch.manual_seed(0)
    model = TwoTower(np.ones(U, bool), _features(), config).train()
    torch.manual_seed(7)
    from_global = model(_batch())
    before = torch.get_rng_state()
    from_generator = model(_batch(), torch.Generator().manual_seed(7))
    # The same numbers in the same order as torch's global generator seeded alike, which the
    # generator leaves alone.
    assert torch.equal(torch.get_rng_state(), before)
    for a, b in zip(from_global, from_generator, strict=True):
        assert torch.equal(a, b)
    other = model(_batch(), torch.Generator().manual_seed(8))
    assert not torch.equal(other[0], from_generator[0])


def test_history_pools_are_the_mean_and_the_recency_weighted_mean_of_item_features():
    torch.manual_seed(0)
    config = TowerConfig(dim=8, hidden_dim=16, id_dim=4, recency_decay=0.5, id_dropout=0.0)
    model = TwoTower(np.ones(U, bool), _features(), config).eval()
    history = torch.tensor([[PAD, 3, 5, 7], [PAD, PAD, PAD, PAD]])
    pooled = model.user_tower.pooled(history,
                                     model.item_tower.features(history.clamp_min(0)))
    f = model.item_tower.features(torch.tensor([3, 5, 7]))
    mean = f.mean(dim=0)
    recency = (0.25 * f[0] + 0.5 * f[1] + 1.0 * f[2]) / 1.75  # newest last, weight 1
    assert torch.allclose(pooled[0], torch.cat([mean, recency]), atol=1e-6)
    assert torch.equal(pooled[1], torch.zeros_like(pooled[1]))


def test_eval_vectors_cover_every_item_and_match_the_forward_pass():
    torch.manual_seed(0)
    model = TwoTower(np.ones(U, bool), _features(), VARIANTS["everything"][0]).eval()
    vectors = model.item_vectors(batch_size=5)
    assert vectors.shape == (ITEMS, 8)
    assert torch.allclose(vectors, model.item_tower(torch.arange(ITEMS)), atol=1e-6)
    batch = _batch()
    users = model.user_vectors(batch["user_index"], batch["history"], batch_size=4)
    assert torch.allclose(users, model(batch)[0], atol=1e-6)
    assert model.training is False


def test_pad_histories_keeps_the_newest_at_the_right():
    out = pad_histories([np.array([1, 2, 3, 4, 5]), np.array([9]), np.array([], np.int64)], 3)
    assert out.tolist() == [[3, 4, 5], [PAD, PAD, 9], [PAD, PAD, PAD]]


def test_bad_configurations_are_refused():
    with pytest.raises(ValueError, match="id_dropout"):
        TowerConfig(id_dropout=1.0)
    with pytest.raises(ValueError, match="dim must be positive"):
        TowerConfig(dim=0)
    with pytest.raises(ValueError, match="no input"):
        TwoTower(np.ones(U, bool), _features(images=False, attributes=False),
                 TowerConfig(item_id=False))
    with pytest.raises(ValueError, match="attribute 'c' must be"):
        ItemFeatures(warm=np.ones(3, bool), attributes={"c": np.array([0.5, 1.0, 2.0])})


def test_appended_items_are_the_cold_rows_a_model_built_with_them_has():
    """A model built on the first 10 items, given the last 2 by `append_items`, gives every
    item and user the vectors of the same weights built on all 12, whose last 2 are cold; and
    `truncate_items` takes them off again. `from_state_dict` rebuilds either from its state."""
    config = VARIANTS["everything"][0]
    whole = _features()
    whole.ids = np.array([f"i{i}" for i in range(ITEMS)])
    head = ItemFeatures(warm=whole.warm[:10], images=whole.images[:10],
                        has_image=whole.has_image[:10],
                        attributes={k: v[:10] for k, v in whole.attributes.items()},
                        ids=whole.ids[:10])
    tail = ItemFeatures(warm=whole.warm[10:], images=whole.images[10:],
                        has_image=whole.has_image[10:],
                        attributes={k: v[10:] for k, v in whole.attributes.items()},
                        ids=whole.ids[10:])
    torch.manual_seed(0)
    full = TwoTower(np.ones(U, bool), whole, config).eval()
    grown = TwoTower(np.ones(U, bool), head, config).eval()
    per_item = ("warm", "images", "has_image", "attr_category", "attr_brand", "ids.weight")
    grown.load_state_dict({k: v for k, v in full.state_dict().items()
                           if k.partition("item_tower.")[2] not in per_item}, strict=False)
    grown.item_tower.ids.weight.data.copy_(full.item_tower.ids.weight[:11])
    grown.append_items(tail)

    assert grown.item_ids.tolist() == whole.ids.tolist()
    torch.testing.assert_close(grown.item_vectors(), full.item_vectors())
    batch = _batch()
    torch.testing.assert_close(grown.user_vectors(batch["user_index"], batch["history"]),
                               full.user_vectors(batch["user_index"], batch["history"]))
    rebuilt = TwoTower.from_state_dict(grown.state_dict(), config, item_ids=grown.item_ids,
                                       attributes=["category", "brand"]).eval()
    torch.testing.assert_close(rebuilt.item_vectors(), full.item_vectors())
    grown.truncate_items(10)
    assert len(grown.item_ids) == 10 and grown.item_tower.ids.weight.shape[0] == 11
    torch.testing.assert_close(grown.item_vectors(), full.item_vectors()[:10])
    with pytest.raises(ValueError, match="appended items must be cold"):
        grown.append_items(ItemFeatures(warm=np.ones(1, bool), images=whole.images[:1],
                                        attributes={k: v[:1] for k, v in whole.attributes.items()},
                                        ids=np.array(["x"])))
    with pytest.raises(ValueError, match=r"reads attributes \['category', 'brand'\]"):
        grown.append_items(ItemFeatures(warm=np.zeros(1, bool), images=whole.images[:1],
                                        ids=np.array(["x"])))
    with pytest.raises(ValueError, match="'brand' code 9 is past its 5 embedding rows"):
        grown.append_items(ItemFeatures(warm=np.zeros(1, bool), images=whole.images[:1],
                                        attributes={"category": np.array([1]),
                                                    "brand": np.array([9])},
                                        ids=np.array(["x"])))
