"""The two scoring engines side by side, behind one result: ``ScoringSummary``.

- torch: ``ranked_batches`` ranks every user in this process, batches in parallel on the CPU cores
  (or on a GPU), and hands each batch on as soon as it is ranked; ``score_with_torch`` feeds it
  tonight's partitions and streams the batches into the staged partition's part files
  (``write_batches``), so the rows of the night are never in memory together; the summary's counts
  are added up batch by batch. ``score_users`` / ``rank_users`` gather every batch into one table in
  the users' input order, for callers that rank a sample in memory (the gate's candidates).
- spark: ``score_with_spark`` runs the Spark job ``jobs/score_recommendations.py`` as a child
  process (``dql_model`` never imports ``jobs/``). The job broadcasts a ``ScoringPayload``
  (``dql_model.scoring.payload``) and ranks on the executors; it writes the same partition and
  summary, which is read back here.

``score`` picks one by ``score.engine``. Both cut the users into the same batches and run the same
``Ranker``, so they write identical rows, and count the masks with the same ``Ranker.count_masks``
(``dql_model.scoring.masks``), so they report the same counts.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from dql_model import faults
from dql_model.config import Config
from dql_model.contract import schema, steps
from dql_model.learning import registry
from dql_model.learning.device import resolve_device
from dql_model.learning.networks import QNetwork
from dql_model.ops import spark_jobs
from dql_model.scoring import masks, retrieval
from dql_model.scoring.masks import MaskCounts
from dql_model.scoring.policy import Policy
from dql_model.scoring.ranking import Catalogue, Ranker, canonical_batches, take_states, user_keys
from dql_model.warehouse import data, storage

ROWS_PER_PART = 4_000_000
"""Rows per Parquet part file of the staged recommendations (the torch engine's): about 25 MB of zstd
Parquet (``bench_scoring`` measured 6.2 MB per million rows, one row group per batch). The rows go to
the file as the batches come, so this sizes the files for readers; memory holds one batch's rows."""
AHEAD_PER_WORKER = 2
"""Batches each scoring thread may rank ahead of the writer (``ranked_batches``)."""


@dataclass(frozen=True)
class ScoringSummary:
    """What a scoring engine wrote for a run date: the validate task's input, the task's XCom."""

    run_date: str
    path: str
    """The staged recommendations partition."""
    rows: int
    users: int
    model_version: str
    top_k: int
    engine: str
    """``spark``, or ``torch (<device>)``."""
    sources: dict[str, int]
    """Rows per source, every source of ``schema.SOURCES`` listed."""
    masked: dict[str, int] = field(default_factory=dict)
    """(user, item) pairs masked per reason (``MaskCounts.masked``; empty in summaries written before)."""
    short_lists: dict[str, int] = field(default_factory=dict)
    """Users with fewer than top_k candidates, who got short lists, by who ranked them (``MaskCounts.short_lists``)."""
    retrieval: dict[str, Any] = field(default_factory=dict)
    """With ``score.retrieval`` ann or auto: what ranked (``method``: the index, or exact and why) and the
    index's recall@K (``k``) against brute force on a sample of ``users``, of whom ``exact_fallback_users``
    were short of candidates and ranked exactly (``choose_retrieval``); empty for exact by configuration."""

    def masks_line(self) -> str:
        """The mask counts in one line (``masks.describe``)."""
        return masks.describe(self.masked, self.short_lists, self.top_k)

    def retrieval_line(self) -> str:
        """The retrieval and its recall in one line (``retrieval.describe``); "" for exact scoring."""
        return retrieval.describe(self.retrieval)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: str | os.PathLike[str]) -> Path:
        """Atomically, as JSON (readers see the previous summary or this one)."""
        return storage.write_json_atomic(path, self.to_dict())

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> ScoringSummary:
        return cls(**json.loads(Path(path).read_text()))


def score(cfg: Config, run_date: str, version: str) -> ScoringSummary:
    """Score the run date's users with model ``version`` on ``score.engine``; staged, unseen by readers.

    Unless ``train.refit`` is false, the version's refit (trained on train + validation too) scores in
    its place when it has one; the rows and the summary name the refit version.
    """
    if cfg.train.refit is not False:
        version = registry.refit_of(cfg.registry.root, version) or version
    return ENGINES[cfg.score.engine](cfg, run_date, version)


# --- torch: one process ---------------------------------------------------------------------------


@contextlib.contextmanager
def one_thread_per_batch(device: torch.device | str = "cpu") -> Iterator[int]:
    """Run torch on one CPU thread inside this block; yields how many batches may run side by side.

    On CPU the rounding of small matrix products and of the packed GRU depends on torch's thread
    count (measured here: 1 vs 2 threads changed scores in the last bits). Spark runs one task per
    core, so the torch engine does the same: each batch on one thread, batches in parallel across
    the cores. Same batches, same single-threaded kernels, identical rows. A GPU is left as it is.
    """
    threads = torch.get_num_threads()
    if torch.device(device).type != "cpu":
        yield 1
        return
    torch.set_num_threads(1)
    try:
        yield threads
    finally:
        torch.set_num_threads(threads)


def score_users(
    model: QNetwork, states: data.UserStates, items: data.ItemFeatures, policy: Policy, **options: Any
) -> pa.Table:
    """Recommendations for every user in ``states``: ``rank_users``' table (``ranked_batches``' arguments)."""
    return rank_users(model, states, items, policy, **options)[0]


def rank_users(
    model: QNetwork, states: data.UserStates, items: data.ItemFeatures, policy: Policy, **options: Any
) -> tuple[pa.Table, MaskCounts]:
    """Recommendations for every user in ``states``, schema ``arrow_schema(RECOMMENDATIONS)``, and what
    the masks took from those users (``Ranker.count_masks``); ``ranked_batches``' arguments.

    Rows come per user in input order, ranks 1..K. All of them are in memory at once: for a night's
    users, ``score_with_torch`` streams ``ranked_batches`` to disk instead.
    """
    ranked = list(ranked_batches(model, states, items, policy, **options))
    if not ranked:
        return schema.arrow_schema(schema.RECOMMENDATIONS).empty_table(), MaskCounts.zero(policy.exclude)
    tables, owners, counts = zip(*ranked, strict=True)
    # Back to the input order of users; rows of one user stay in rank order (stable sort).
    order = np.argsort(np.concatenate(owners), kind="stable")
    return pa.concat_tables(tables).take(pa.array(order)), sum(counts, MaskCounts.zero(policy.exclude))


def ranked_batches(
    model: QNetwork,
    states: data.UserStates,
    items: data.ItemFeatures,
    policy: Policy,
    *,
    batch_size: int,
    **ranker_options: Any,
) -> Iterator[tuple[pa.Table, np.ndarray, MaskCounts]]:
    """Each canonical batch of ``states`` ranked, in batch order, as soon as it is done: (its rows, by
    user then rank; each row's user as a position in ``states``; what the masks took from its users).

    ``items`` is tonight's item index (availability, ids and categories; it may have more items
    than the model); ``ranker_options`` are ``make_ranker``'s (``popularity``, ``model_version``,
    ``generated_at``, ``device``, ``source``, ``ann``). A user gets fewer than K rows only when fewer
    items are left after masking. ``ranker_batches`` says how the batches run.
    """
    if not canonical_batches(states.user_id, user_keys(states.user_id), batch_size):
        return
    yield from ranker_batches(make_ranker(model, items, policy, **ranker_options), states, batch_size=batch_size)


def make_ranker(
    model: QNetwork,
    items: data.ItemFeatures,
    policy: Policy,
    *,
    popularity: np.ndarray,
    model_version: str,
    generated_at: datetime,
    device: torch.device | str = "cpu",
    source: str = schema.SOURCE_DQN,
    ann: retrieval.AnnSettings | None = None,
) -> Ranker:
    """The ``Ranker`` of tonight's catalogue: ``popularity`` holds a score per item_idx for the fallback
    (e.g. action counts); ``ann`` (``score.retrieval: ann``) builds its candidate index. The model is
    moved to ``device`` and set to eval mode."""
    with one_thread_per_batch(device):
        return Ranker(
            model,
            Catalogue.from_features(items, popularity),
            policy,
            model_version=model_version,
            generated_at=generated_at,
            device=device,
            source=source,
            ann=ann,
        )


def ranker_batches(
    ranker: Ranker, states: data.UserStates, *, batch_size: int
) -> Iterator[tuple[pa.Table, np.ndarray, MaskCounts]]:
    """``ranked_batches`` with a ranker already built. Batches run side by side, one per core
    (``one_thread_per_batch``), at most ``AHEAD_PER_WORKER`` per core ahead of the consumer: what is
    held is a few batches' rows, whatever the number of users."""
    keys = user_keys(states.user_id)
    batches = canonical_batches(states.user_id, keys, batch_size)
    if not batches:
        return
    with one_thread_per_batch(ranker.device) as workers:

        def score_one(batch: np.ndarray) -> tuple[pa.Table, np.ndarray, MaskCounts]:
            batch_states = take_states(states, batch)
            table, user = ranker.rank_batch(batch_states, keys[batch])
            return table, batch[user], ranker.count_masks(batch_states)

        workers = min(workers, len(batches))
        # torch releases the GIL in its kernels: one Python thread per core scores batches side by side.
        with ThreadPoolExecutor(max_workers=workers) as pool:
            ahead: deque = deque()
            try:
                for batch in batches:
                    ahead.append(pool.submit(score_one, batch))
                    if len(ahead) > AHEAD_PER_WORKER * workers:
                        yield ahead.popleft().result()
                while ahead:
                    yield ahead.popleft().result()
            finally:  # the consumer stopped early (a failed write): drop the batches not started
                for pending in ahead:
                    pending.cancel()


def choose_retrieval(ranker: Ranker, states: data.UserStates, ann: retrieval.AnnSettings | None, *, seed: int) -> dict[str, Any]:
    """Settle the night's retrieval before any user is ranked; returns the scoring summary's ``retrieval``.

    {} for exact scoring by configuration. With an index, its recall@K against brute force on
    ``ann.recall_sample`` users drawn with ``seed`` (the same users on a rerun). Under ``auto``: below
    ``ann.min_items`` indexable items the ranker has no index and scores exactly; with one, a recall
    below ``ann.min_recall`` doubles the probed lists and measures again, up to ``ann.max_probe``, and a
    recall still short drops the index (``Ranker.drop_ann``): the night scores exactly and says why.
    """
    if ann is None:
        return {}
    if ranker.policy.explores:
        return {"method": f"exact (score.retrieval={'auto' if ann.auto else 'ann'} is not used by an exploring policy: "
                          "its softmax needs every item)"}
    if ranker.ann_index is None:  # auto, below its size
        return {"method": f"exact (score.retrieval=auto: {ranker.indexable:,} items, ann from {ann.min_items:,})"}
    index = ranker.ann_index
    if ann.recall_sample == 0 or len(states) == 0:
        return {"method": f"ann ({index.describe()}, {ranker.ann_candidates} candidates)"}
    size = min(ann.recall_sample, len(states))
    sample = np.sort(np.random.default_rng(seed).choice(len(states), size=size, replace=False))
    sampled, keys = take_states(states, sample), user_keys(states.user_id)[sample]
    ceiling = min(ann.max_probe(index.lists), index.lists)
    while True:
        with one_thread_per_batch(ranker.device):
            recall, users, handed = ranker.ann_recall(sampled, keys)
        if not ann.auto or recall >= ann.min_recall or index.probe >= ceiling:
            break
        index.set_probe(min(2 * index.probe, ceiling))
    measured = {"k": ranker.policy.top_k, "recall": recall, "users": users, "exact_fallback_users": handed}
    method = f"ann ({index.describe()}, {ranker.ann_candidates} candidates)"  # at the probe it settled on
    if ann.auto and recall < ann.min_recall:
        ranker.drop_ann()
        method = (f"exact (score.retrieval=auto: ann's recall@{ranker.policy.top_k} {recall:.4f} at {index.probe} of "
                  f"{index.lists} lists probed is below score.ann_min_recall {ann.min_recall:g})")
    return {"method": method, **measured}


@dataclass(frozen=True)
class Written:
    """What ``write_batches`` wrote, counted batch by batch as the rows went to disk."""

    rows: int
    users: int
    """Users with at least one row."""
    sources: dict[str, int]
    """Rows per source, every source of ``schema.SOURCES`` listed."""
    counts: MaskCounts


def write_batches(
    batches: Iterable[tuple[pa.Table, np.ndarray, MaskCounts]],
    path: str | os.PathLike[str],
    *,
    exclude: str,
    n_users: int,
    say: Callable[[str], None] | None = None,
) -> Written:
    """Stream ``ranked_batches`` into the partition folder ``path`` (``storage.write_partition_stream``,
    ``ROWS_PER_PART`` rows per part file) and count what the summary reports on the way.

    Rows are in batch order (batches by crc32(user_id) bucket, users by user_id within), a
    deterministic order; readers order them by user and rank. Until the last part is written the
    previous partition stays in place: a crash mid-scoring leaves it whole, and the fault point
    ``score:part_written`` (after each part file) lets a test kill the process there. ``n_users``
    (the users being scored) and ``say`` (default: print) give a progress line per part file.
    """
    say = say or functools.partial(print, flush=True)
    tally = {"rows": 0, "users": 0, "sources": dict.fromkeys(schema.SOURCES, 0), "counts": MaskCounts.zero(exclude)}
    started = time.perf_counter()

    def tables() -> Iterator[pa.Table]:
        for table, _, counts in batches:
            tally["rows"] += table.num_rows
            tally["users"] += pc.count_distinct(table.column(schema.USER_ID)).as_py()
            for counted in pc.value_counts(table.column(schema.SOURCE)).to_pylist():
                tally["sources"][counted["values"]] += counted["counts"]
            tally["counts"] = tally["counts"] + counts
            yield table

    def part_written(file: os.PathLike[str], rows: int) -> None:
        faults.point("score:part_written")
        seconds = time.perf_counter() - started
        done = tally["users"]
        rate = done / seconds if seconds > 0 else 0.0
        left = f", about {(n_users - done) / rate:.0f} s left" if rate and done < n_users else ""
        say(f"[dqlrec] scoring: {Path(file).name} written ({rows:,} rows); "
            f"{done:,} of {n_users:,} users in {seconds:.0f} s ({rate:,.0f}/s){left}")

    storage.write_partition_stream(
        tables(),
        path,
        schema=schema.arrow_schema(schema.RECOMMENDATIONS),
        rows_per_file=ROWS_PER_PART,
        on_part=part_written,
    )
    return Written(**tally)


def score_with_torch(cfg: Config, run_date: str, version: str) -> ScoringSummary:
    """The torch engine on the warehouse: tonight's partitions in, staged partition and summary out."""
    layout = cfg.layout
    protocol = data.night_protocol(cfg, run_date)
    policy = Policy.from_config(cfg.score, run_date, protocol=protocol)
    device = resolve_device(cfg.train.device)
    model, meta = registry.load_model(Path(cfg.registry.root) / version, device=str(device))
    items = data.load_item_features(layout.partition(schema.ITEM_INDEX, run_date), price_buckets=cfg.model.price_buckets)
    since = data.active_since(cfg.score, protocol, run_date)
    states = data.load_user_states(
        layout.partition(schema.USER_STATES, run_date), max_len=cfg.etl.max_len, exclude=policy.exclude, since=since
    )
    if since is not None:
        print(f"[dqlrec] scoring the {len(states)} users active since {since:%Y-%m-%d} (score.active_window)", flush=True)
    transitions = layout.partition(schema.TRANSITIONS, run_date)
    popularity = data.action_counts(transitions, n_items=items.n_items, split=(schema.TRAIN, schema.VALIDATION))
    ann = retrieval.AnnSettings.from_config(cfg.score)
    ranker = make_ranker(
        model,
        items,
        policy,
        popularity=popularity,
        model_version=version,
        generated_at=datetime.now(UTC),
        device=str(device),
        source=registry.model_source(meta),
        ann=ann,
    )
    retrieved = choose_retrieval(ranker, states, ann, seed=policy.seed)
    if retrieved:
        print(f"[dqlrec] scoring: retrieval {retrieval.describe(retrieved)}", flush=True)
    ranked = ranker_batches(ranker, states, batch_size=cfg.score.batch_size)
    path = layout.staged(schema.RECOMMENDATIONS, run_date)
    with contextlib.closing(ranked):  # a failed write stops the batches still being ranked
        written = write_batches(ranked, path, exclude=policy.exclude, n_users=len(states))
    summary = ScoringSummary(
        run_date=run_date,
        path=path,
        rows=written.rows,
        users=written.users,
        model_version=version,
        top_k=policy.top_k,
        engine=f"torch ({device})",
        sources=written.sources,
        masked=written.counts.masked,
        short_lists=written.counts.short_lists,
        retrieval=retrieved,
    )
    summary.write(layout.scoring_summary(run_date))
    return summary


# --- spark: the job in a child process ------------------------------------------------------------


def score_with_spark(cfg: Config, run_date: str, version: str) -> ScoringSummary:
    """Run the Spark scoring job (``jobs/score_recommendations.py``) on this config; the summary it wrote."""
    spark_jobs.run_job(
        steps.SCORING_JOB,
        run_date,
        ["--model-version", version],
        config=cfg.to_dict(),
        scratch=str(Path(cfg.layout.scoring_summary(run_date)).parent),
    )
    return ScoringSummary.read(cfg.layout.scoring_summary(run_date))


ENGINES = {"torch": score_with_torch, "spark": score_with_spark}
"""score.engine -> the function that scores with it (the config only admits these names)."""
