"""The approximate candidate stage of scoring (``score.retrieval: ann``): a FAISS IVF index over the
model's item vectors that proposes a few hundred items per user for the exact re-rank in ``Ranker``.

The ranking score is an inner product plus a bias, Q(s, a) = <f(s), g(a)> + b(a); with the bias as an
extra dimension (items [g(a), b(a)], users [f(s), 1]) it is one inner product, which an IVF index with
``METRIC_INNER_PRODUCT`` searches: k-means cells over the item vectors, and per user the items of the
``probe`` cells whose centroids score highest. With probe = lists every item is seen, and the
candidates are the exact top ``candidates``. (Turning the inner product into a Euclidean distance with
an extra coordinate sqrt(M² - |x|²) and an L2 index did no better here: on 20k items in 64 dimensions,
552 lists, recall of the 200 candidates 0.26 against 0.29 on isotropic Gaussian vectors, 0.996
against 1.0 on clustered ones, at 16 probes.) IVF gains from clusters in the item vectors, which a
trained model's have; isotropic random vectors are its worst case.

Only items the model may recommend tonight (available and known to it) go into the index, so the
unavailable and new-since-training masks hold by construction; the user's excluded items are
masked in the re-rank (``Ranker``). The index is built once per night from the model's weights with
a fixed k-means seed: a rerun builds the same index and proposes the same candidates (checked on
30k items: identical candidates with FAISS on 1 and on 2 threads).

``faiss`` is imported only when ``ann`` is on: the exact path does not need it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dql_model.config import ScoreConfig

CANDIDATES_PER_SLOT = 10
"""``score.ann_candidates`` 0: this many candidates per recommendation slot."""
LISTS_PER_SQRT_ITEM = 4
"""``score.ann_lists`` 0: about this many IVF lists per square root of the indexed items."""
KMEANS_SEED = 20_240_601
"""The k-means seed of the IVF lists: the same model builds the same index."""
AUTO_MAX_PROBED_SHARE = 8
"""``retrieval: auto`` probes at most 1/this of the lists before it falls back to exact: beyond that
the candidate stage saves too little over brute force to be worth its approximation."""


@dataclass(frozen=True)
class AnnSettings:
    """The ann stage's settings as ``score.*`` gives them (0: auto)."""

    lists: int = 0
    probe: int = 16
    candidates: int = 0
    recall_sample: int = 1000
    auto: bool = False
    """``score.retrieval: auto``: the index only from ``min_items`` indexed items, trusted only from
    ``min_recall`` on the sample (``engines.choose_retrieval``); exact otherwise."""
    min_items: int = 0
    min_recall: float = 0.0

    @classmethod
    def from_config(cls, cfg: ScoreConfig) -> AnnSettings | None:
        """The settings when ``score.retrieval`` is ann, or auto on the torch engine; else None (exact)."""
        if cfg.retrieval == "exact" or (cfg.retrieval == "auto" and cfg.engine != "torch"):
            return None
        auto = cfg.retrieval == "auto"  # explicit ann: always the index, whatever its size and recall
        return cls(
            cfg.ann_lists, cfg.ann_probe, cfg.ann_candidates, cfg.ann_recall_sample,
            auto=auto, min_items=cfg.ann_min_items if auto else 0, min_recall=cfg.ann_min_recall if auto else 0.0,
        )

    def max_probe(self, lists: int) -> int:
        """The most lists ``auto`` probes in search of ``min_recall``: an eighth of them, at least the setting."""
        return max(self.probe, lists // AUTO_MAX_PROBED_SHARE)

    def n_lists(self, n_items: int) -> int:
        """IVF lists for ``n_items`` indexed items: the setting, or ~4 * sqrt(items); never more than items."""
        wanted = self.lists or LISTS_PER_SQRT_ITEM * round(math.sqrt(n_items))
        return max(1, min(wanted, n_items))

    def n_candidates(self, top_k: int) -> int:
        return self.candidates or CANDIDATES_PER_SLOT * top_k


class AnnIndex:
    """An IVF inner-product index over [item vector, bias] of the given item_idx."""

    def __init__(self, vectors: np.ndarray, biases: np.ndarray, item_idx: np.ndarray, settings: AnnSettings):
        import faiss

        if len(item_idx) == 0:
            raise ValueError("score.retrieval=ann: no item the model knows is available tonight; nothing to index")
        points = np.ascontiguousarray(np.column_stack([vectors, biases]), dtype=np.float32)
        dim = points.shape[1]
        self.lists = settings.n_lists(len(item_idx))
        self.probe = min(settings.probe, self.lists)
        self._quantizer = faiss.IndexFlatIP(dim)  # held: the IVF index does not own it
        self.index = faiss.IndexIVFFlat(self._quantizer, dim, self.lists, faiss.METRIC_INNER_PRODUCT)
        self.index.cp.seed = KMEANS_SEED
        self.index.cp.verbose = False
        # Few points per list is fine for a candidate stage; faiss would warn on every small catalogue.
        self.index.cp.min_points_per_centroid = 1
        self.index.train(points)
        self.index.add_with_ids(points, np.asarray(item_idx, dtype=np.int64))
        self.index.nprobe = self.probe
        self.size = len(item_idx)

    def set_probe(self, probe: int) -> None:
        """Search ``probe`` lists per user from now on (at most every list); the index stays as built."""
        self.probe = max(1, min(probe, self.lists))
        self.index.nprobe = self.probe

    def search(self, states: np.ndarray, n: int) -> np.ndarray:
        """[B, n] candidate item_idx per row of f(s) [B, D], -1 where fewer than n were found."""
        ones = np.ones(len(states), dtype=np.float32)
        queries = np.ascontiguousarray(np.column_stack([states, ones]), dtype=np.float32)
        _, found = self.index.search(queries, min(n, self.size))
        return found

    def describe(self) -> str:
        return f"FAISS IVF, {self.lists} lists, {self.probe} probed, {self.size:,} items"


def recall_at_k(exact_users: np.ndarray, exact_items: np.ndarray, ann_users: np.ndarray, ann_items: np.ndarray) -> float:
    """The share of the exact lists' (user, item) pairs that the ann lists hold too (1.0 when nothing is exact)."""
    if len(exact_users) == 0:
        return 1.0
    width = int(max(exact_items.max(initial=0), ann_items.max(initial=0))) + 1
    exact = exact_users.astype(np.int64) * width + exact_items
    found = ann_users.astype(np.int64) * width + ann_items
    return float(np.isin(exact, found).mean())


def describe(retrieval: dict) -> str:
    """The scoring summary's ``retrieval`` in one line; "" when scoring was exact by configuration."""
    if not retrieval:
        return ""
    if "recall" not in retrieval:
        return retrieval["method"]
    return (
        f"{retrieval['method']}; recall@{retrieval['k']} against brute force "
        f"{retrieval['recall']:.4f} on {retrieval['users']:,} sampled users"
        + (f" ({retrieval['exact_fallback_users']:,} short of candidates, ranked exactly)"
           if retrieval.get("exact_fallback_users") else "")
    )
