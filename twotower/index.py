"""ItemIndex: top-k products for query vectors, by inner product on L2-normalized vectors.

One class over four FAISS index kinds (Johnson et al. 2019, "Billion-scale similarity search
with GPUs"), each with defaults chosen from the catalog size N and every parameter overridable:

    flat     exact search (IndexFlat, inner product): the reference every other kind is
             measured against
    ivf      inverted lists over a k-means coarse quantizer: nlist ≈ 4·√N lists, nprobe ≈ √nlist
             of them searched per query
    ivfpq    ivf with product-quantized codes: m sub-vectors of nbits bits each (d/4 bytes by
             default), far less memory, approximate scores
    hnsw     a hierarchical navigable small-world graph (Malkov & Yashunin 2018): M links per
             node, ef_construction / ef_search beam widths

Where it runs (`device="auto"`): FAISS's GPU index when the installed faiss sees a GPU (flat,
ivf, ivfpq; the `gpu` extra); else, for `flat` with a CUDA torch, exact search in torch on the
GPU (chunked matmul + top-k); else FAISS on CPU. The caller's code is the same in every case.

`search(queries, k, exclude=...)` drops the ids a query must not get back (the user's
training items) and still returns k items: it asks the index for k + |excluded| candidates,
and a query left short by an approximate index is searched again exhaustively.

`save(dir)` writes index.faiss, ids.parquet and meta.json; meta.json records the sha256 of the
other two, and `load` checks them before parsing anything, so a damaged or edited file is
refused with a `DataError` instead of answering with garbage scores. Folders saved before
checksums were recorded (meta.json without "sha256") still load, unverified.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from twotower.files import DataError, atomic_path
from twotower.progress import progress as show_progress

__all__ = ["KINDS", "ItemIndex", "default_params", "exact_search"]

KINDS = ("flat", "ivf", "ivfpq", "hnsw")
FORMAT_VERSION = 1
_FILES = {"index": "index.faiss", "ids": "ids.parquet", "meta": "meta.json"}
_HASHED = ("index", "ids")  # the files whose sha256 meta.json records
_HASH_BLOCK = 1 << 20  # bytes read at a time when hashing: indexes can outgrow memory
_FAISS_GPU_KINDS = ("flat", "ivf", "ivfpq")
_TRAIN_POINTS_PER_LIST = 64  # k-means sample per coarse centroid (faiss wants ≥ 39)
_ADD_BLOCK = 1 << 16  # vectors per `add` call, for the progress bar
_TOPK_ELEMENTS = 1 << 27  # torch search: at most this many (query, item) scores at once


def default_params(kind: str, n: int, dim: int) -> dict[str, int]:
    """The parameters `ItemIndex.build` uses for `kind` on N vectors of dimension `dim`."""
    if kind not in KINDS:
        raise ValueError(f"unknown index kind {kind!r}; choose one of {', '.join(KINDS)}")
    if kind == "flat":
        return {}
    if kind == "hnsw":
        return {"M": 32, "ef_construction": 80, "ef_search": 128}
    nlist = max(1, min(round(4 * math.sqrt(n)), n // 39))
    params = {"nlist": nlist, "nprobe": min(nlist, max(1, round(math.sqrt(nlist))))}
    if kind == "ivfpq":
        m = max(d for d in range(1, max(1, dim // 4) + 1) if dim % d == 0)
        nbits = int(min(8, max(1, math.floor(math.log2(max(2, n // 39))))))  # ≥ 39 per code
        params.update(m=m, nbits=nbits)
    return params


def exact_search(
    items: torch.Tensor, queries: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-k by inner product, (Q, k) scores and item rows, best first, in torch.

    items (N, d), queries (Q, d) on one device. Queries go in chunks so at most ~2^27 scores
    (512 MiB in float32) exist at once; this is the GPU path for `flat` without faiss-gpu.
    """
    chunk = max(1, _TOPK_ELEMENTS // max(1, items.shape[0]))
    scores, rows = [], []
    for start in range(0, queries.shape[0], chunk):
        block = queries[start:start + chunk] @ items.T  # (chunk, N)
        top = torch.topk(block, k, dim=1)
        scores.append(top.values)
        rows.append(top.indices)
    if not scores:
        empty = queries.new_zeros((0, k))
        return empty, empty.long()
    return torch.cat(scores), torch.cat(rows)


class ItemIndex:
    """Item vectors and their ids, searchable by inner product; see the module docstring.

    Build with `ItemIndex.build`, reopen with `ItemIndex.load`. `kind`, `params`, `normalized`,
    `source` and `engine` ("faiss", "faiss-gpu" or "torch") describe the index.
    """

    def __init__(
        self,
        index: faiss.Index | torch.Tensor,
        ids: np.ndarray,
        *,
        kind: str,
        params: dict[str, int],
        normalized: bool,
        source: str | None,
        engine: str,
        resources: Any = None,
    ) -> None:
        self._index = index
        self._resources = resources  # faiss GPU resources must outlive the GPU index
        self.ids = ids
        self.kind = kind
        self.params = params
        self.normalized = normalized
        self.source = source
        self.engine = engine
        self._positions = pd.Index(ids)

    # ---------------------------------------------------------------- building and loading
    @classmethod
    def build(
        cls,
        vectors: np.ndarray | torch.Tensor,
        ids: Sequence[Any] | np.ndarray,
        kind: str = "flat",
        *,
        device: str = "auto",
        normalize: bool = True,
        source: str | None = None,
        seed: int = 0,
        progress: bool = False,
        **params: int,
    ) -> ItemIndex:
        """Index N vectors (N, d) under their N unique ids.

        kind: "flat" | "ivf" | "ivfpq" | "hnsw"; params override `default_params(kind, N, d)`
        (nlist, nprobe, m, nbits, M, ef_construction, ef_search). normalize: L2-normalize the
        vectors (and later the queries), so scores are cosines. device: "auto", "cpu", "cuda"
        or "cuda:N" (see the module docstring). source: what the vectors came from, kept in
        the saved metadata. seed: the k-means training sample.
        """
        matrix = _matrix(vectors, "vectors")
        ids = _ids(ids, matrix.shape[0])
        if normalize:
            matrix = _normalized(matrix, "vector", ids)
        n, dim = matrix.shape
        unknown = set(params) - set(default_params(kind, n, dim))
        if unknown:
            raise ValueError(
                f"{kind} index takes no parameter(s) {sorted(unknown)}; it takes "
                f"{sorted(default_params(kind, n, dim)) or 'none'}"
            )
        resolved = {**default_params(kind, n, dim), **params}
        _check_params(kind, resolved, n, dim)
        engine, gpu = _engine(kind, device)
        common = {"kind": kind, "params": resolved, "normalized": normalize, "source": source}
        if engine == "torch":
            items = torch.from_numpy(matrix).to(gpu)
            return cls(items, ids, engine=engine, **common)
        index = faiss.index_factory(dim, _factory_string(kind, resolved),
                                    faiss.METRIC_INNER_PRODUCT)
        resources = None
        if engine == "faiss-gpu":
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, gpu.index or 0, index)
        if kind == "hnsw":
            index.hnsw.efConstruction = resolved["ef_construction"]
        _set_search_params(index, kind, resolved)
        if not index.is_trained:
            index.train(_training_sample(matrix, resolved["nlist"], seed))
        with show_progress(total=n, desc=f"index {kind}", unit="vec", enabled=progress) as bar:
            for start in range(0, n, _ADD_BLOCK):
                index.add(matrix[start:start + _ADD_BLOCK])
                bar.update(min(_ADD_BLOCK, n - start))
        return cls(index, ids, engine=engine, resources=resources, **common)

    @classmethod
    def load(cls, directory: str | os.PathLike[str], device: str = "auto") -> ItemIndex:
        """Reopen a folder written by `save`, on `device`; raise `DataError` if it is not one.

        index.faiss and ids.parquet must match the sha256 meta.json records, checked before
        either is parsed. A folder saved before checksums were recorded loads unverified (its
        files are still parsed and cross-checked, but changed vector bytes go unnoticed);
        saving it again adds them.
        """
        directory = Path(directory)
        paths = {name: directory / file for name, file in _FILES.items()}
        missing = [p.name for p in paths.values() if not p.is_file()]
        if missing:
            raise DataError(f"not an index folder: missing {', '.join(missing)}", path=directory)
        meta = _read_meta(paths["meta"])
        recorded = meta.get("sha256", {})  # {} in folders saved before checksums were recorded
        for file, digest in recorded.items():
            actual = _sha256(directory / file)
            if actual != digest:  # both shown: a damaged meta.json is told apart this way
                raise DataError(f"checksum mismatch, the file is damaged or was changed (sha256 "
                                f"{actual[:12]}…, meta.json records {digest[:12]}…); rebuild "
                                "the index", path=directory / file)
        try:
            index = faiss.read_index(str(paths["index"]))
        except RuntimeError as err:
            raise DataError(f"unreadable faiss index ({_first_line(err)})",
                            path=paths["index"]) from err
        ids = _read_ids(paths["ids"])
        kind = meta["kind"]
        found = {"count": index.ntotal, "dim": index.d, "ids": len(ids),
                 "kind": _kind_of(index)}
        expected = {"count": meta["count"], "dim": meta["dim"], "ids": meta["count"],
                    "kind": kind}
        wrong = [f"{key} {found[key]!r} (metadata says {expected[key]!r})"
                 for key in found if found[key] != expected[key]]
        if wrong:
            raise DataError(f"files do not match: {'; '.join(wrong)}", path=directory)
        common = {"kind": kind, "params": meta["params"], "normalized": meta["normalized"],
                  "source": meta.get("source")}
        _set_search_params(index, kind, meta["params"])
        engine, gpu = _engine(kind, device)
        if engine == "torch":
            items = torch.from_numpy(index.reconstruct_n(0, index.ntotal)).to(gpu)
            return cls(items, ids, engine=engine, **common)
        resources = None
        if engine == "faiss-gpu":
            resources = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(resources, gpu.index or 0, index)
        return cls(index, ids, engine=engine, resources=resources, **common)

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write index.faiss, ids.parquet and meta.json to `directory`, atomically.

        meta.json, written last, records the sha256 of the other two for `load` to check.
        """
        directory = Path(directory)
        with atomic_path(directory) as tmp:
            tmp.mkdir()
            faiss.write_index(self._cpu_index(), str(tmp / _FILES["index"]))
            pq.write_table(pa.table({"item_id": self.ids}), tmp / _FILES["ids"])
            meta = {"format": FORMAT_VERSION, "kind": self.kind, "dim": self.dim,
                    "count": len(self), "metric": "inner_product", "normalized": self.normalized,
                    "params": self.params, "source": self.source,
                    "faiss_version": faiss.__version__,
                    "sha256": {_FILES[name]: _sha256(tmp / _FILES[name]) for name in _HASHED}}
            (tmp / _FILES["meta"]).write_text(json.dumps(meta, indent=2) + "\n")
        return directory

    # ---------------------------------------------------------------- searching
    def set_search_params(self, **params: int) -> None:
        """Change search-time parameters in place: nprobe (ivf, ivfpq), ef_search (hnsw).

        They trade recall for speed without a rebuild; `save` keeps the new values.
        """
        allowed = {"ivf": {"nprobe"}, "ivfpq": {"nprobe"}, "hnsw": {"ef_search"}}.get(
            self.kind, set())
        unknown = set(params) - allowed
        if unknown:
            raise ValueError(f"a {self.kind} index has no search-time parameter(s) "
                             f"{sorted(unknown)}; it has {sorted(allowed) or 'none'}")
        resolved = {**self.params, **params}
        _check_params(self.kind, resolved, len(self), self.dim)
        _set_search_params(self._index, self.kind, resolved)
        self.params = resolved

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        """Vector dimension d."""
        return int(self._index.shape[1] if self.engine == "torch" else self._index.d)

    def search(
        self,
        queries: np.ndarray | torch.Tensor,
        k: int,
        exclude: Sequence[Iterable[Any] | None] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """The k best items per query: (Q, k) float32 scores and (Q, k) ids, best first.

        exclude: per query, ids that must not be returned (say, the user's training items);
        the top-k is still full after they are dropped. Ids not in the index are ignored, but
        ids of another type (int for a str index, or the reverse) raise TypeError, and so does
        a bare string where a list of ids belongs (it would be read as its characters).
        """
        matrix = _matrix(queries, "queries")
        if matrix.shape[1] != self.dim:
            raise ValueError(f"queries have dimension {matrix.shape[1]}; the index has {self.dim}")
        if self.normalized:
            matrix = _normalized(matrix, "query", None)
        n = len(self)
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not 1 <= k <= n:
            raise ValueError(f"k must be an integer in [1, {n}] (the index size), got {k!r}")
        owner, banned = self._excluded(exclude, matrix.shape[0])
        counts = np.bincount(owner, minlength=matrix.shape[0])
        short = np.flatnonzero(n - counts < k)
        if short.size:
            row = int(short[0])
            raise ValueError(f"query {row} excludes {counts[row]} of {n} items, leaving fewer "
                             f"than k={k} to return")
        scores = np.empty((matrix.shape[0], k), np.float32)
        rows = np.empty((matrix.shape[0], k), np.int64)
        # Each query asks for k + (what it excludes, rounded up to a power of two): queries
        # fall into a few groups that share one search size.
        extra = np.where(counts > 0, 2 ** np.ceil(np.log2(np.maximum(counts, 1))), 0)
        wanted = np.minimum(n, k + extra.astype(np.int64))
        for size in np.unique(wanted):
            group = np.flatnonzero(wanted == size)
            found = self._take(matrix[group], int(size), k, group, owner, banned,
                               exhaustive=False)
            left = np.flatnonzero(found[2] < k)
            if left.size:  # an approximate index returned too few: search those exhaustively
                again = self._take(matrix[group[left]], int(size), k, group[left], owner,
                                   banned, exhaustive=True)
                for part, fixed in zip(found, again, strict=True):
                    part[left] = fixed
            if (found[2] < k).any():
                raise RuntimeError(f"the {self.kind} index returned fewer than {k} items for a "
                                   "query even when searched exhaustively")
            scores[group], rows[group] = found[0], found[1]
        return scores, self.ids[rows]

    def _take(
        self, queries: np.ndarray, size: int, k: int, group: np.ndarray, owner: np.ndarray,
        banned: np.ndarray, *, exhaustive: bool,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Search `size` candidates for the queries `group`, drop banned and missing ones.

        (owner[j], banned[j]) are the (query, item row) pairs to leave out. Returns the first k
        survivors per query, (B, k) scores and rows, and (B,) how many survived in all.
        """
        scores, rows = self._raw_search(queries, size, exhaustive=exhaustive)
        n = len(self)
        local = np.full(int(owner.max(initial=group.max(initial=0))) + 1, -1, np.int64)
        local[group] = np.arange(group.size)
        mine = local[owner] >= 0
        banned_keys = local[owner[mine]] * n + banned[mine]  # keys of (row in group, item)
        keys = np.arange(group.size)[:, None] * n + rows  # (B, size)
        valid = (rows >= 0) & ~np.isin(keys, banned_keys)
        order = np.argsort(~valid, axis=1, kind="stable")[:, :k]  # valid candidates first
        return (np.take_along_axis(scores, order, 1), np.take_along_axis(rows, order, 1),
                valid.sum(axis=1))

    def _raw_search(
        self, queries: np.ndarray, size: int, *, exhaustive: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        """(B, size) scores and item rows from the underlying index; -1 rows where it has none."""
        if self.engine == "torch":
            items = self._index
            scores, rows = exact_search(items, torch.from_numpy(queries).to(items.device), size)
            return scores.cpu().numpy(), rows.cpu().numpy()
        if not exhaustive or self.kind == "flat":
            return self._index.search(queries, size)
        if self.kind == "hnsw":
            params = faiss.SearchParametersHNSW(efSearch=max(len(self), size))
            return self._index.search(queries, size, params=params)
        ivf = _ivf(self._index)
        probes = ivf.nprobe
        ivf.nprobe = ivf.nlist
        try:
            return self._index.search(queries, size)
        finally:
            ivf.nprobe = probes

    def _excluded(
        self, exclude: Sequence[Iterable[Any] | None] | None, n_queries: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """The (query, item row) pairs to leave out, unique, as two int64 arrays."""
        if exclude is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        if isinstance(exclude, str | bytes):
            raise TypeError(f"exclude must be a list of id lists, one per query, not the string "
                            f"{exclude!r}")
        bare = next((e for e in exclude if isinstance(e, str | bytes)), None)
        if bare is not None:
            shown = str(bare) if isinstance(bare, str) else bare  # np.str_('x') shows as 'x'
            raise TypeError(f"exclude holds the string {shown!r} where a list of ids belongs; "
                            f"write [{shown!r}] to exclude that one id")
        if len(exclude) != n_queries:
            raise ValueError(f"exclude has {len(exclude)} lists for {n_queries} queries")
        arrays = [np.asarray([] if e is None else e if isinstance(e, np.ndarray) else list(e))
                  .ravel() for e in exclude]
        given = [a for a in arrays if a.size]
        for array in given:
            if _is_text(array.dtype) != _is_text(self.ids.dtype):
                raise TypeError(f"exclude holds {array.dtype} ids but the index ids are "
                                f"{self.ids.dtype}: e.g. {array[0].item()!r}")
        if not given:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows = self._positions.get_indexer(np.concatenate(given))
        owner = np.repeat(np.arange(n_queries), [a.size for a in arrays])
        known = rows >= 0
        pairs = np.unique(owner[known] * len(self) + rows[known])  # one pair per (query, item)
        return pairs // len(self), pairs % len(self)

    def _cpu_index(self) -> faiss.Index:
        if self.engine == "torch":
            index = faiss.IndexFlatIP(self.dim)
            index.add(self._index.float().cpu().numpy())
            return index
        if self.engine == "faiss-gpu":
            return faiss.index_gpu_to_cpu(self._index)
        return self._index

    def __repr__(self) -> str:
        return (f"ItemIndex(kind={self.kind!r}, count={len(self)}, dim={self.dim}, "
                f"engine={self.engine!r}, params={self.params})")


# -------------------------------------------------------------------- helpers
def _matrix(values: np.ndarray | torch.Tensor, name: str) -> np.ndarray:
    """(N, d) C-contiguous float32 numpy, or ValueError naming the problem."""
    if isinstance(values, torch.Tensor):
        values = values.detach().float().cpu().numpy()
    matrix = np.ascontiguousarray(values, dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] == 0:
        raise ValueError(f"{name} must be a (count, dim) matrix, got shape {matrix.shape}")
    bad = ~np.isfinite(matrix).all(axis=1)
    if bad.any():
        raise ValueError(f"{name} row {int(np.flatnonzero(bad)[0])} is not finite (NaN or inf)")
    return matrix


def _normalized(matrix: np.ndarray, what: str, ids: np.ndarray | None) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    zero = np.flatnonzero(norms[:, 0] == 0)
    if zero.size:
        row = int(zero[0])
        name = f"id {ids[row].item()!r}" if ids is not None else f"row {row}"
        raise ValueError(f"{what} {name} is all zeros and cannot be L2-normalized")
    return matrix / norms


def _ids(ids: Sequence[Any] | np.ndarray, n: int) -> np.ndarray:
    array = np.asarray(ids)
    if array.dtype == object:
        array = array.astype(str)
    if array.ndim != 1 or len(array) != n:
        raise ValueError(f"need one id per vector: {n} vectors, ids of shape {array.shape}")
    if not (_is_text(array.dtype) or np.issubdtype(array.dtype, np.integer)):
        raise TypeError(f"ids must be integers or strings, got {array.dtype}")
    unique, counts = np.unique(array, return_counts=True)
    if (counts > 1).any():
        raise ValueError(f"ids must be unique; {unique[counts > 1][0].item()!r} appears "
                         f"{counts[counts > 1][0]} times")
    return array


def _read_meta(path: Path) -> dict[str, Any]:
    """meta.json parsed, with every key `load` uses present and of the type `save` writes."""
    try:
        meta = json.loads(path.read_bytes())
    except ValueError as err:  # not JSON, or not UTF-8
        raise DataError(f"unreadable metadata ({err})", path=path) from err
    if not isinstance(meta, dict):
        raise DataError(f"metadata must be a JSON object, got {type(meta).__name__}", path=path)
    if meta.get("format") != FORMAT_VERSION or isinstance(meta.get("format"), bool) \
            or meta.get("kind") not in KINDS:
        raise DataError(
            f"unknown index format {meta.get('format')!r} / kind {meta.get('kind')!r}; this "
            f"twotower writes format {FORMAT_VERSION}", path=path)
    absent = {"count", "dim", "params", "normalized"} - set(meta)
    if absent:
        raise DataError(f"metadata lacks {sorted(absent)}", path=path)
    wrong = _meta_problems(meta)
    if wrong:
        raise DataError(f"bad metadata: {'; '.join(wrong)}", path=path)
    return meta


def _meta_problems(meta: dict[str, Any]) -> list[str]:
    """What is wrong with the values of a meta.json that has all its keys; [] when none."""
    problems = [f"{key} must be a non-negative integer, got {meta[key]!r}"
                for key in ("count", "dim")
                if isinstance(meta[key], bool) or not isinstance(meta[key], int) or meta[key] < 0]
    if not isinstance(meta["normalized"], bool):
        problems.append(f"normalized must be true or false, got {meta['normalized']!r}")
    if not isinstance(meta.get("source"), str | None):
        problems.append(f"source must be a string or null, got {meta['source']!r}")
    hashed = {_FILES[name] for name in _HASHED}
    checksums = meta.get("sha256")
    if "sha256" in meta and not (isinstance(checksums, dict) and set(checksums) == hashed
                                 and all(isinstance(v, str) for v in checksums.values())):
        problems.append(f"sha256 must map {sorted(hashed)} to hex digests, got {checksums!r}")
    params = meta["params"]
    names = set(default_params(meta["kind"], 1, 1))  # the names depend on the kind alone
    if not isinstance(params, dict) or set(params) != names:
        problems.append(f"{meta['kind']} params must be {sorted(names)}, got {params!r}")
    elif not problems:
        try:
            _check_params(meta["kind"], params, meta["count"], meta["dim"])
        except ValueError as err:
            problems.append(str(err))
    return problems


def _read_ids(path: Path) -> np.ndarray:
    """The item_id column of ids.parquet, held to what `build` asks of ids."""
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as err:
        raise DataError(f"unreadable id table ({_first_line(err)})", path=path) from err
    if "item_id" not in table.column_names:
        raise DataError(f"no item_id column (columns: {table.column_names})", path=path)
    column = table.column("item_id")
    if column.null_count:
        raise DataError(f"{column.null_count} ids are null", path=path, column="item_id")
    values = column.to_numpy(zero_copy_only=False)
    try:
        return _ids(values, len(values))  # `load` compares the count with the index's
    except (TypeError, ValueError) as err:
        raise DataError(str(err), path=path, column="item_id") from err


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read in blocks so a file larger than memory hashes."""
    digest = hashlib.sha256()
    with path.open("rb") as file:
        while block := file.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _is_text(dtype: np.dtype) -> bool:
    return dtype.kind in "UO"


def _check_params(kind: str, params: dict[str, int], n: int, dim: int) -> None:
    for name, value in params.items():
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{kind} parameter {name} must be a positive integer, got {value!r}")
    if "nlist" in params and params["nlist"] > n:
        raise ValueError(f"nlist={params['nlist']} is more lists than the {n} vectors to index")
    if "nprobe" in params and params["nprobe"] > params["nlist"]:
        raise ValueError(f"nprobe={params['nprobe']} exceeds nlist={params['nlist']}")
    if kind == "ivfpq":
        if dim % params["m"]:
            raise ValueError(f"ivfpq m={params['m']} must divide the dimension {dim}")
        if params["nbits"] > 16:
            raise ValueError(f"ivfpq nbits={params['nbits']} must be at most 16")


def _factory_string(kind: str, params: dict[str, int]) -> str:
    return {
        "flat": "Flat",
        "ivf": f"IVF{params.get('nlist')},Flat",
        # "np": no polysemous training, which only serves Hamming pre-filtering (unused here)
        # and makes training 10x slower.
        "ivfpq": f"IVF{params.get('nlist')},PQ{params.get('m')}x{params.get('nbits')}np",
        "hnsw": f"HNSW{params.get('M')},Flat",
    }[kind]


def _set_search_params(index: faiss.Index, kind: str, params: dict[str, int]) -> None:
    if kind == "hnsw":
        index.hnsw.efSearch = params["ef_search"]
    elif kind in ("ivf", "ivfpq"):
        _ivf(index).nprobe = params["nprobe"]


def _training_sample(matrix: np.ndarray, nlist: int, seed: int) -> np.ndarray:
    """At most 64 points per coarse list, drawn without replacement (k-means cost is linear)."""
    size = min(len(matrix), _TRAIN_POINTS_PER_LIST * nlist)
    if size == len(matrix):
        return matrix
    rows = np.sort(np.random.default_rng(seed).choice(len(matrix), size, replace=False))
    return matrix[rows]


def _engine(kind: str, device: str) -> tuple[str, torch.device]:
    """("faiss" | "faiss-gpu" | "torch", the torch device) for a kind on a requested device."""
    if device == "auto":
        if kind in _FAISS_GPU_KINDS and _faiss_gpus() > 0:
            return "faiss-gpu", torch.device("cuda", 0)
        if kind == "flat" and torch.cuda.is_available():
            return "torch", torch.device("cuda", torch.cuda.current_device())
        return "faiss", torch.device("cpu")
    target = torch.device(device)
    if target.type == "cpu":
        return "faiss", target
    if target.type != "cuda":
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    if kind in _FAISS_GPU_KINDS and _faiss_gpus() > (target.index or 0):
        return "faiss-gpu", target
    if kind == "flat" and torch.cuda.is_available():
        return "torch", target
    raise ValueError(
        f"no GPU engine for a {kind} index on {device}: faiss sees {_faiss_gpus()} GPU(s) and "
        f"torch.cuda.is_available() is {torch.cuda.is_available()}; install the `gpu` extra "
        "(faiss-gpu), use kind='flat' with a CUDA torch, or pass device='cpu'"
    )


def _faiss_gpus() -> int:
    return faiss.get_num_gpus() if hasattr(faiss, "StandardGpuResources") else 0


def _ivf(index: faiss.Index) -> Any:
    """The object holding nprobe / nlist: the IVF index itself, CPU or GPU."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return index  # GPU IVF indexes carry nprobe and nlist themselves


def _kind_of(index: faiss.Index) -> str | None:
    index = faiss.downcast_index(index)
    for kind, cls in (("ivfpq", faiss.IndexIVFPQ), ("ivf", faiss.IndexIVFFlat),
                      ("hnsw", faiss.IndexHNSWFlat), ("flat", faiss.IndexFlat)):
        if isinstance(index, cls):
            return kind
    return None


def _first_line(err: Exception) -> str:
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
