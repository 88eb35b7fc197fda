"""ItemIndex: exact search equals torch.topk, approximate kinds are measured against it,
exclusion never leaks and never shortens the top-k, and saved folders reopen or fail clearly."""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import twotower.index as index_module
from twotower.files import DataError
from twotower.index import KINDS, ItemIndex, default_params, exact_search

N, D = 3000, 16


def _clustered(n: int, dim: int, clusters: int, seed: int) -> np.ndarray:
    """Points around `clusters` random centres: the structure item embeddings have."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim))
    return (centres[rng.integers(clusters, size=n)]
            + 0.3 * rng.standard_normal((n, dim))).astype(np.float32)


@pytest.fixture(scope="module")
def catalog():
    vectors = _clustered(N, D, 40, seed=0)
    ids = np.array([f"p{i:05d}" for i in range(N)])
    queries = _clustered(200, D, 40, seed=1)
    return vectors, ids, queries


def _normalized(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _torch_topk(vectors, queries, k):
    scores = torch.from_numpy(_normalized(queries)) @ torch.from_numpy(_normalized(vectors)).T
    return torch.topk(scores, k, dim=1)


def test_flat_search_equals_torch_topk(catalog):
    vectors, ids, queries = catalog
    scores, found = ItemIndex.build(vectors, ids, "flat").search(queries, 25)
    top = _torch_topk(vectors, queries, 25)
    np.testing.assert_array_equal(found, ids[top.indices.numpy()])
    np.testing.assert_allclose(scores, top.values.numpy(), atol=1e-5)
    assert scores.dtype == np.float32 and found.shape == (200, 25)


def test_exact_search_in_torch_equals_faiss_flat_across_chunks(catalog, monkeypatch):
    vectors, _, queries = catalog
    monkeypatch.setattr(index_module, "_TOPK_ELEMENTS", N * 7)  # 7 queries per chunk
    items, q = torch.from_numpy(_normalized(vectors)), torch.from_numpy(_normalized(queries))
    scores, rows = exact_search(items, q, 30)
    reference = faiss.IndexFlatIP(D)
    reference.add(_normalized(vectors))
    ref_scores, ref_rows = reference.search(_normalized(queries), 30)
    np.testing.assert_array_equal(rows.numpy(), ref_rows)
    np.testing.assert_allclose(scores.numpy(), ref_scores, atol=1e-5)


@pytest.mark.parametrize(("kind", "floor"), [("ivf", 0.95), ("ivfpq", 0.5), ("hnsw", 0.97)])
def test_approximate_kinds_recall_the_exact_top_k(catalog, kind, floor):
    vectors, ids, queries = catalog
    exact = ItemIndex.build(vectors, ids, "flat").search(queries, 20)[1]
    params = {"nprobe": 16} if kind != "hnsw" else {}
    approx = ItemIndex.build(vectors, ids, kind, **params).search(queries, 20)[1]
    recall = np.mean([len(set(a) & set(e)) / 20 for a, e in zip(approx, exact, strict=True)])
    assert recall >= floor, f"{kind} recall@20 {recall:.3f} against exact search"


@pytest.mark.parametrize("kind", KINDS)
def test_exclude_never_returns_an_excluded_id_and_still_returns_k(catalog, kind):
    vectors, ids, queries = catalog
    index = ItemIndex.build(vectors, ids, kind, **({"nprobe": 2} if "ivf" in kind else {}))
    rng = np.random.default_rng(3)
    plain = index.search(queries, 10)[1]
    # Each query excludes its own top 5 and up to 300 random ids, some unknown to the index.
    exclude = [list(plain[q, :5]) + list(rng.choice(ids, rng.integers(0, 300))) + ["nope"]
               for q in range(len(queries))]
    exclude[0] = None
    exclude[1] = []
    scores, found = index.search(queries, 10, exclude=exclude)
    assert found.shape == (200, 10) and np.isfinite(scores).all()
    for q, row in enumerate(found):
        assert len(set(row)) == 10
        assert not set(row) & set(exclude[q] or [])
    np.testing.assert_array_equal(found[:2], plain[:2])
    assert (np.diff(scores, axis=1) <= 1e-6).all()  # still best first


def test_flat_exclusion_gives_the_exact_top_k_of_the_allowed_items(catalog):
    vectors, _, queries = catalog
    rng = np.random.default_rng(4)
    exclude = [rng.choice(N, rng.integers(0, 2 * N // 3), replace=False) for _ in queries]
    found = ItemIndex.build(vectors, np.arange(N), "flat").search(queries, 50, exclude)[1]
    scores = _normalized(queries) @ _normalized(vectors).T
    for q in range(len(queries)):
        scores[q, exclude[q]] = -np.inf
    np.testing.assert_array_equal(found, np.argsort(-scores, axis=1, kind="stable")[:, :50])


def test_ivf_queries_left_short_are_searched_exhaustively(catalog):
    vectors, ids, queries = catalog
    index = ItemIndex.build(vectors, ids, "ivf", nlist=64, nprobe=1)  # ~47 items per list
    exclude = [index.search(queries[q:q + 1], 100)[1][0][:60] for q in range(20)]
    found = index.search(queries[:20], 100, exclude=exclude)[1]
    assert found.shape == (20, 100)
    for q in range(20):
        assert len(set(found[q])) == 100 and not set(found[q]) & set(exclude[q])


def test_integer_ids_and_excluding_ids_of_the_wrong_type(catalog):
    vectors, _, queries = catalog
    index = ItemIndex.build(vectors, np.arange(N) * 10, "flat")
    assert index.search(queries, 3)[1].dtype.kind == "i"
    with pytest.raises(TypeError, match=r"exclude holds .* ids but the index ids are int64"):
        index.search(queries[:1], 3, exclude=[["10"]])


@pytest.mark.parametrize("kind", KINDS)
def test_save_load_round_trip(catalog, tmp_path, kind):
    vectors, ids, queries = catalog
    index = ItemIndex.build(vectors, ids, kind, source="emb.parquet")
    before = index.search(queries, 10)
    index.save(tmp_path / "idx")
    again = ItemIndex.load(tmp_path / "idx", device="cpu")
    after = again.search(queries, 10)
    np.testing.assert_array_equal(after[1], before[1])
    np.testing.assert_allclose(after[0], before[0], atol=1e-6)
    assert (again.kind, again.params, again.source, again.normalized, len(again), again.dim) \
        == (kind, index.params, "emb.parquet", True, N, D)
    meta = json.loads((tmp_path / "idx" / "meta.json").read_text())
    assert meta["count"] == N and meta["dim"] == D and meta["kind"] == kind
    assert meta["sha256"] == {name: hashlib.sha256((tmp_path / "idx" / name).read_bytes())
                              .hexdigest() for name in ("index.faiss", "ids.parquet")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["idx"]  # no temporary left


def test_loading_a_folder_whose_files_do_not_match_fails_clearly(catalog, tmp_path):
    vectors, ids, _ = catalog
    ItemIndex.build(vectors, ids, "flat").save(tmp_path / "a")
    ItemIndex.build(vectors[:100], ids[:100], "flat").save(tmp_path / "b")
    (tmp_path / "a" / "ids.parquet").replace(tmp_path / "a" / "ids.keep")
    with pytest.raises(DataError, match=r"not an index folder: missing ids\.parquet"):
        ItemIndex.load(tmp_path / "a")
    (tmp_path / "b" / "ids.parquet").replace(tmp_path / "a" / "ids.parquet")
    with pytest.raises(DataError, match=r"a/ids\.parquet: checksum mismatch"):
        ItemIndex.load(tmp_path / "a")
    _edit_meta(tmp_path / "a", _legacy)  # without checksums, the files are cross-checked
    with pytest.raises(DataError, match="files do not match: ids 100 \\(metadata says 3000\\)"):
        ItemIndex.load(tmp_path / "a")
    (tmp_path / "b" / "index.faiss").replace(tmp_path / "a" / "index.faiss")
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    (tmp_path / "a" / "meta.json").write_text(json.dumps(
        {**meta, "kind": "hnsw", "params": default_params("hnsw", N, D)}))
    with pytest.raises(DataError, match=r"count 100 .*kind 'flat' \(metadata says 'hnsw'\)"):
        ItemIndex.load(tmp_path / "a")
    (tmp_path / "a" / "index.faiss").write_bytes(b"junk")
    with pytest.raises(DataError, match="unreadable faiss index"):
        ItemIndex.load(tmp_path / "a")


def _saved(catalog, folder, kind="flat", n=500):
    """The first n catalog items as a saved index of `kind`; its folder."""
    vectors, ids, _ = catalog
    return ItemIndex.build(vectors[:n], ids[:n], kind).save(folder)


def _edit_meta(folder, change) -> None:
    """Rewrite meta.json as `change(meta)` returns it."""
    meta = json.loads((folder / "meta.json").read_text())
    (folder / "meta.json").write_text(json.dumps(change(meta)))


def _legacy(meta: dict) -> dict:
    """meta.json as saved before checksums were recorded."""
    return {key: value for key, value in meta.items() if key != "sha256"}


def _restamped(folder):
    """A meta editor recording the files' current sha256, as if they had been saved so."""
    def change(meta):
        return {**meta, "sha256": {name: hashlib.sha256((folder / name).read_bytes()).hexdigest()
                                   for name in ("index.faiss", "ids.parquet")}}
    return change


def _flip(path, at: float, count: int = 64) -> None:
    """XOR `count` bytes of a file from the fraction `at` of its length on."""
    data = bytearray(path.read_bytes())
    start = int(len(data) * at)
    for i in range(start, min(len(data), start + count)):
        data[i] ^= 0x5A
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", KINDS)
def test_flipped_bytes_in_index_faiss_fail_the_checksum(catalog, tmp_path, kind):
    folder = _saved(catalog, tmp_path / "idx", kind)
    _flip(folder / "index.faiss", 0.5)
    listing = sorted(p.name for p in folder.iterdir())
    with pytest.raises(DataError, match=r"idx/index\.faiss: checksum mismatch, the file is "
                                        r"damaged or was changed \(sha256 [0-9a-f]{12}…, "
                                        r"meta\.json records [0-9a-f]{12}…\); rebuild the index"):
        ItemIndex.load(folder, device="cpu")
    assert sorted(p.name for p in folder.iterdir()) == listing  # load reads, never writes


def test_a_damaged_digest_in_meta_json_shows_in_the_mismatch(catalog, tmp_path):
    folder = _saved(catalog, tmp_path / "idx")
    _edit_meta(folder, lambda meta: {**meta, "sha256": {**meta["sha256"], "ids.parquet": "0" * 64}})
    with pytest.raises(DataError, match=r"idx/ids\.parquet: checksum mismatch.*\(sha256 "
                                        r"[0-9a-f]{12}…, meta\.json records 000000000000…\)"):
        ItemIndex.load(folder, device="cpu")


def test_flipped_vector_bytes_load_unnoticed_without_a_checksum(catalog, tmp_path):
    """Why the checksum is needed: a flat index's vectors parse whatever their bytes are."""
    folder = _saved(catalog, tmp_path / "idx")
    _flip(folder / "index.faiss", 0.5)
    _edit_meta(folder, _legacy)
    scores = ItemIndex.load(folder, device="cpu").search(catalog[2][:20], 5)[0]
    assert np.abs(scores).max() > 1.01  # not a cosine: garbage


def test_an_index_saved_without_checksums_still_loads(catalog, tmp_path):
    queries = catalog[2]
    folder = _saved(catalog, tmp_path / "idx", "hnsw")
    expected = ItemIndex.load(folder, device="cpu").search(queries, 5)
    _edit_meta(folder, _legacy)
    again = ItemIndex.load(folder, device="cpu")
    np.testing.assert_array_equal(again.search(queries, 5)[1], expected[1])
    again.save(folder)  # saving it again records the checksums
    assert set(json.loads((folder / "meta.json").read_text())["sha256"]) == \
        {"index.faiss", "ids.parquet"}


@pytest.mark.parametrize("stamp", ["checksums", "legacy"])
@pytest.mark.parametrize(("damage", "message"), [
    ("truncated", "Parquet magic bytes not found"),
    ("garbage", "Parquet magic bytes not found"),
    ("empty", "file size is 0 bytes"),
])
def test_damaged_ids_parquet_is_refused(catalog, tmp_path, stamp, damage, message):
    folder = _saved(catalog, tmp_path / "idx")
    path = folder / "ids.parquet"
    path.write_bytes({"truncated": path.read_bytes()[:-40], "garbage": b"\x00garbage" * 50,
                      "empty": b""}[damage])
    if stamp == "legacy":
        _edit_meta(folder, _legacy)
        message = rf"idx/ids\.parquet: unreadable id table \(.*{message}"
    else:
        message = r"idx/ids\.parquet: checksum mismatch"
    with pytest.raises(DataError, match=message):
        ItemIndex.load(folder, device="cpu")


@pytest.mark.parametrize("stamp", ["checksums", "legacy"])
@pytest.mark.parametrize(("table", "message"), [
    ({"item_id": ["p00000", "p00001", "p00000"]},
     r", column 'item_id': ids must be unique; 'p00000' appears 2 times"),
    ({"id": ["a", "b", "c"]}, r": no item_id column \(columns: \['id'\]\)"),
    ({"item_id": ["a", None, "c"]}, r", column 'item_id': 1 ids are null"),
    ({"item_id": [0.5, 1.5, 2.5]}, r", column 'item_id': ids must be integers or strings"),
])
def test_bad_ids_in_a_well_formed_ids_parquet_are_refused(catalog, tmp_path, stamp, table,
                                                          message):
    """An ids.parquet rewritten (and its checksum updated, or none recorded) is held to the
    rules `build` holds ids to."""
    folder = _saved(catalog, tmp_path / "idx", n=3)
    pq.write_table(pa.table(table), folder / "ids.parquet")
    _edit_meta(folder, _legacy if stamp == "legacy" else _restamped(folder))
    with pytest.raises(DataError, match=rf"idx/ids\.parquet{message}"):
        ItemIndex.load(folder, device="cpu")


@pytest.mark.parametrize(("content", "message"), [
    (b'{"format": 1, "kind": "fl', r"unreadable metadata \(Unterminated string"),
    (b"\xff\xfe\x00garbage\x9c", r"unreadable metadata \("),
    (b"", r"unreadable metadata \(Expecting value"),
    (b"[1, 2]", r"metadata must be a JSON object, got list"),
    (b'"flat"', r"metadata must be a JSON object, got str"),
])
def test_unparsable_meta_json_is_refused(catalog, tmp_path, content, message):
    folder = _saved(catalog, tmp_path / "idx")
    (folder / "meta.json").write_bytes(content)
    with pytest.raises(DataError, match=rf"idx/meta\.json: {message}"):
        ItemIndex.load(folder, device="cpu")


@pytest.mark.parametrize(("change", "message"), [
    ({"format": True}, r"unknown index format True"),
    ({"kind": ["flat"]}, r"unknown index format 1 / kind \['flat'\]"),
    ({"count": None}, r"metadata lacks \['count'\]"),
    ({"count": "500"}, r"bad metadata: count must be a non-negative integer, got '500'"),
    ({"dim": 16.0}, r"dim must be a non-negative integer, got 16\.0"),
    ({"normalized": "yes"}, r"normalized must be true or false, got 'yes'"),
    ({"source": 7}, r"source must be a string or null, got 7"),
    ({"params": []}, r"ivf params must be \['nlist', 'nprobe'\], got \[\]"),
    ({"params": {"nlist": 12}}, r"ivf params must be \['nlist', 'nprobe'\]"),
    ({"params": {"nlist": 12, "nprobe": "4"}}, r"ivf parameter nprobe must be a positive integer"),
    ({"params": {"nlist": 12, "nprobe": 13}}, r"nprobe=13 exceeds nlist=12"),
    ({"sha256": "abc"}, r"sha256 must map \['ids\.parquet', 'index\.faiss'\] to hex digests"),
    ({"sha256": {"index.faiss": "0" * 64}}, r"sha256 must map"),
])
def test_meta_json_with_missing_keys_or_wrong_types_is_refused(catalog, tmp_path, change,
                                                               message):
    folder = _saved(catalog, tmp_path / "idx", "ivf")
    _edit_meta(folder, lambda meta: {key: value for key, value in {**meta, **change}.items()
                                     if value is not None})
    with pytest.raises(DataError, match=rf"idx/meta\.json: .*{message}"):
        ItemIndex.load(folder, device="cpu")


def test_file_hashes_stream_in_blocks(tmp_path):
    path = tmp_path / "big.bin"
    data = np.random.default_rng(0).bytes(32 << 20)
    path.write_bytes(data)
    del data
    tracemalloc.start()
    try:
        digest = index_module._sha256(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert peak < 4 << 20, f"hashing a 32 MiB file held {peak} bytes at once"


def test_a_bare_string_for_exclude_is_refused(catalog):
    vectors, ids, queries = catalog
    index = ItemIndex.build(vectors, ids, "flat")
    with pytest.raises(TypeError, match="exclude must be a list of id lists, one per query, "
                                        "not the string 'abc'"):
        index.search(queries[:3], 5, exclude="abc")
    with pytest.raises(TypeError, match=r"exclude holds the string 'p00001' where a list of ids "
                                        r"belongs; write \['p00001'\]"):
        index.search(queries[:1], 5, exclude=["p00001"])
    with pytest.raises(TypeError, match="exclude holds the string 'p00000'"):
        index.search(queries[:3], 5, exclude=ids[:3])  # numpy strings too


def test_bad_queries_and_bad_k_raise_clear_errors(catalog):
    vectors, ids, queries = catalog
    index = ItemIndex.build(vectors, ids, "flat")
    with pytest.raises(ValueError, match="queries have dimension 8; the index has 16"):
        index.search(queries[:, :8], 5)
    bad = queries[:3].copy()
    bad[2, 4] = np.nan
    with pytest.raises(ValueError, match="queries row 2 is not finite"):
        index.search(bad, 5)
    for k in (0, -1, N + 1, 2.5):
        with pytest.raises(ValueError, match=f"k must be an integer in \\[1, {N}\\]"):
            index.search(queries, k)
    with pytest.raises(ValueError, match="query row 0 is all zeros"):
        index.search(np.zeros((1, D)), 5)
    with pytest.raises(ValueError, match="query 0 excludes 2999 of 3000 items"):
        index.search(queries[:1], 2, exclude=[ids[:2999]])


def test_bad_vectors_ids_and_params_raise_clear_errors(catalog):
    vectors, ids, _ = catalog
    with pytest.raises(ValueError, match="ids must be unique; 'p00000' appears 2 times"):
        ItemIndex.build(vectors[:2], np.array(["p00000", "p00000"]))
    with pytest.raises(ValueError, match="need one id per vector: 3000 vectors"):
        ItemIndex.build(vectors, ids[:5])
    zero = vectors[:3].copy()
    zero[1] = 0
    with pytest.raises(ValueError, match="vector id 'p00001' is all zeros"):
        ItemIndex.build(zero, ids[:3])
    with pytest.raises(ValueError, match="unknown index kind 'lsh'"):
        ItemIndex.build(vectors, ids, "lsh")
    with pytest.raises(ValueError, match="hnsw index takes no parameter\\(s\\) \\['nprobe'\\]"):
        ItemIndex.build(vectors, ids, "hnsw", nprobe=4)
    with pytest.raises(ValueError, match="ivfpq m=5 must divide the dimension 16"):
        ItemIndex.build(vectors, ids, "ivfpq", m=5)
    with pytest.raises(ValueError, match="nprobe=99 exceeds nlist=10"):
        ItemIndex.build(vectors, ids, "ivf", nlist=10, nprobe=99)


def test_default_params_scale_with_the_catalog():
    assert default_params("ivf", 1_000_000, 128) == {"nlist": 4000, "nprobe": 63}
    assert default_params("ivfpq", 1_000_000, 128) == {"nlist": 4000, "nprobe": 63, "m": 32,
                                                       "nbits": 8}
    small = default_params("ivfpq", 500, 10)
    assert small["nlist"] == 12 and small["m"] == 2 and 2 ** small["nbits"] * 39 <= 500


def test_device_choice_on_a_machine_without_a_gpu(catalog):
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only choice; this machine has CUDA")
    vectors, ids, _ = catalog
    assert ItemIndex.build(vectors, ids, "flat", device="auto").engine == "faiss"
    with pytest.raises(ValueError, match="no GPU engine for a hnsw index on cuda"):
        ItemIndex.build(vectors, ids, "hnsw", device="cuda")


@pytest.mark.gpu
def test_flat_on_cuda_equals_cpu_and_saves_as_a_cpu_index(catalog, tmp_path):
    vectors, ids, queries = catalog
    gpu = ItemIndex.build(vectors, ids, "flat", device="cuda")
    assert gpu.engine in ("torch", "faiss-gpu")
    cpu = ItemIndex.build(vectors, ids, "flat", device="cpu")
    exclude = [ids[:50]] * len(queries)
    np.testing.assert_array_equal(gpu.search(queries, 20, exclude)[1],
                                  cpu.search(queries, 20, exclude)[1])
    gpu.save(tmp_path / "idx")
    assert ItemIndex.load(tmp_path / "idx", device="cpu").engine == "faiss"


@pytest.mark.gpu
@pytest.mark.skipif(not hasattr(faiss, "StandardGpuResources") or faiss.get_num_gpus() == 0,
                    reason="needs faiss-gpu and a GPU it sees")
@pytest.mark.parametrize("kind", ["flat", "ivf", "ivfpq"])
def test_faiss_gpu_indexes_search_like_their_cpu_twins(catalog, tmp_path, kind):
    vectors, ids, queries = catalog
    gpu = ItemIndex.build(vectors, ids, kind, device="cuda", nprobe=16) if kind != "flat" \
        else ItemIndex.build(vectors, ids, kind, device="cuda")
    assert gpu.engine == "faiss-gpu"
    exact = ItemIndex.build(vectors, ids, "flat", device="cpu").search(queries, 10)[1]
    found = gpu.search(queries, 10, exclude=[ids[:5]] * len(queries))[1]
    assert not set(found.ravel()) & set(ids[:5])
    if kind != "ivfpq":
        plain = gpu.search(queries, 10)[1]
        recall = np.mean([len(set(a) & set(e)) / 10 for a, e in zip(plain, exact, strict=True)])
        assert recall >= 0.95
    gpu.save(tmp_path / "idx")
    assert ItemIndex.load(tmp_path / "idx", device="cpu").kind == kind


def test_search_params_change_in_place_and_survive_save(catalog, tmp_path):
    items, ids, queries = catalog
    index = ItemIndex.build(items, ids, "ivf", device="cpu", nlist=40, nprobe=1)
    narrow = index.search(queries, 20)[1]
    index.set_search_params(nprobe=40)  # every list: exact
    assert index.params["nprobe"] == 40
    exact = ItemIndex.build(items, ids, "flat", device="cpu").search(queries, 20)[1]
    assert (index.search(queries, 20)[1] == exact).all() and not (narrow == exact).all()
    index.save(tmp_path / "ivf")
    assert ItemIndex.load(tmp_path / "ivf", device="cpu").params["nprobe"] == 40
    with pytest.raises(ValueError, match="nprobe=41 exceeds nlist=40"):
        index.set_search_params(nprobe=41)
    with pytest.raises(ValueError, match=r"has no search-time parameter\(s\) \['ef_search'\]"):
        index.set_search_params(ef_search=10)
