"""MovieLens ratings (100K, 1M, 10M/20M/25M/latest layouts) into the events and items tables.

Ratings, one of (PATH is the file or the data set's folder, searched in this order):
- ``u.data`` (ML-100K): tab separated ``user item rating unix-seconds``, no header;
- ``ratings.dat`` (ML-1M, ML-10M): ``UserID::MovieID::Rating::Timestamp``;
- ``ratings.csv`` (ML-20M, ML-25M, ml-latest): header ``userId,movieId,rating,timestamp``.

Movies, for categories (``--items``, else the matching file beside the ratings):
- ``u.item``: pipe separated, latin-1, 19 genre flags in the order of ``u.genre`` (read when
  present, else the order documented with ML-100K);
- ``movies.dat``: ``MovieID::Title::Genres`` (latin-1), ``movies.csv``: ``movieId,title,genres``;
  genres are written ``A|B``.

Every rating is an event of type ``rating`` with ``value`` = the rating; ``session_id`` is null.
A rating outside the contract's ``schema.RATING_BOUNDS`` ([0.5, 5]: the half stars of ML-10M and
later are kept) is quarantined (``bad_value``). ``category_id`` is the movie's first genre: the first flag set in ``u.item``, the
first listed in ``movies.*`` (those lists are alphabetical, so "Adventure" wins over "Comedy");
"(no genres listed)" is null. ``available`` is true and ``price`` null for every movie.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from dql_model.contract import schema
from dql_model.errors import MissingInput
from dql_model.importers import core
from dql_model.importers.warehouse import ImportRun

GENRES_100K = (
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western",
)  # fmt: skip
NO_GENRES = "(no genres listed)"
RATINGS = {"u.data": "u.item", "ratings.dat": "movies.dat", "ratings.csv": "movies.csv"}
"""Ratings file name -> the movies file of the same layout."""
CSV_COLUMNS = {
    "userId": "user id",
    "movieId": "movie id",
    "rating": "rating 1..5",
    "timestamp": "unix seconds",
}
_UNIT_SEPARATOR = "\x1f"  # a delimiter that never occurs: the line is split by hand


def locate(path: Path, items: Path | None) -> tuple[Path, Path | None]:
    """The ratings file and the movies file (None when there is none)."""
    if path.is_dir():
        found = [path / name for name in RATINGS if (path / name).is_file()]
        if not found:
            raise MissingInput(f"no MovieLens ratings file in {path}: expected one of {list(RATINGS)}")
        ratings = found[0]
    else:
        ratings = path
        if not ratings.is_file():
            raise MissingInput(f"MovieLens ratings file {ratings} does not exist")
        if ratings.name not in RATINGS:
            raise core.UnusableInput(
                f"{ratings}: unknown MovieLens ratings file name; expected one of {list(RATINGS)} "
                "(or use --format events with a column mapping)"
            )
    movies = items if items is not None else ratings.parent / RATINGS[ratings.name]
    if items is not None and not movies.is_file():
        raise MissingInput(f"MovieLens movies file {movies} does not exist")
    return ratings, movies if movies.is_file() else None


def run(
    run: ImportRun, path: Path, *, items: Path | None = None, block_size: int = core.DEFAULT_BLOCK_SIZE
) -> dict:
    ratings, movies = locate(path, items)
    run.read(ratings, schema.EVENTS, rating_chunks(ratings, block_size), convert_ratings)
    catalogue: list[pa.Table] = []
    if movies is not None:
        chunks, convert = movie_reader(movies, block_size)
        run.read(movies, schema.ITEMS, chunks, convert, sink=catalogue.append)
    contract = schema.arrow_schema(schema.ITEMS)
    return run.finish(pa.concat_tables(catalogue) if catalogue else contract.empty_table())


def rating_chunks(ratings: Path, block_size: int):
    """Chunks with columns user, item, rating, timestamp (and the '::' gaps of ratings.dat)."""
    if ratings.name == "u.data":
        names = ("user", "item", "rating", "timestamp")
        return core.read_csv_chunks(ratings, column_names=names, delimiter="\t", block_size=block_size)
    if ratings.name == "ratings.dat":  # '::' read as ':' with empty fields between
        names = ("user", "_gap1", "item", "_gap2", "rating", "_gap3", "timestamp")
        return core.read_csv_chunks(ratings, column_names=names, delimiter=":", block_size=block_size)
    core.require_columns(ratings, core.csv_header(ratings), CSV_COLUMNS)
    return _renamed(core.read_csv_chunks(ratings, block_size=block_size))


def _renamed(chunks):
    rename = {"userId": "user", "movieId": "item", "rating": "rating", "timestamp": "timestamp"}
    for chunk in chunks:
        chunk.table = chunk.table.rename_columns([rename.get(n, n) for n in chunk.table.column_names])
        yield chunk


def convert_ratings(chunk: core.Chunk) -> tuple[pa.Table, core.Verdicts]:
    t = chunk.table
    user, item, rating_text, time = (
        core.as_strings(t.column(c)) for c in ("user", "item", "rating", "timestamp")
    )
    rating = core.parse_floats(rating_text)
    micros = core.epoch_micros(time, "s")
    verdicts = core.Verdicts(chunk)
    gaps = [n for n in t.column_names if n.startswith("_gap")]
    if gaps:  # a ratings.dat line whose fields are not separated by exactly '::'
        split = core.any_of([pc.not_equal(t.column(g), "") for g in gaps])
        verdicts.check(schema.RULE_MALFORMED_ROW, "::", split, user)
    verdicts.check(schema.RULE_NULL_ID, "user", core.blank(user), user)
    verdicts.check(schema.RULE_NULL_ID, "item", core.blank(item), item)
    verdicts.check(schema.RULE_BAD_TIMESTAMP, "timestamp", pc.is_null(micros), time)
    low, high = schema.RATING_BOUNDS
    in_bounds = pc.and_(pc.greater_equal(rating, low), pc.less_equal(rating, high))
    verdicts.check(schema.RULE_BAD_VALUE, "rating", pc.invert(in_bounds), rating_text)
    events = core.accepted_events(
        verdicts, user_id=user, item_id=item, micros=micros, event_type=schema.RATING, value=rating
    )
    return events, verdicts


def movie_reader(movies: Path, block_size: int):
    """(chunks, converter) for u.item, movies.dat or movies.csv."""
    if movies.name == "u.item" or movies.suffix == ".item":
        genres = _genre_names(movies.parent / "u.genre")
        names = ("movie", "title", "release", "video_release", "url", *(f"g{i}" for i in range(len(genres))))
        chunks = core.read_csv_chunks(
            movies,
            column_names=names,
            delimiter="|",
            encoding="latin-1",
            quote_char=False,
            block_size=block_size,
        )
        return chunks, lambda chunk: _flags_to_items(chunk, genres)
    if movies.suffix == ".dat":
        chunks = core.read_csv_chunks(
            movies, column_names=("line",), delimiter=_UNIT_SEPARATOR, encoding="latin-1", quote_char=False,
            block_size=block_size,
        )  # fmt: skip
        return chunks, _dat_to_items
    core.require_columns(movies, core.csv_header(movies), {"movieId": "movie id", "genres": "A|B genre list"})
    return core.read_csv_chunks(movies, block_size=block_size), _csv_to_items


def _genre_names(path: Path) -> tuple[str, ...]:
    """Genre names in flag order from u.genre (``name|index`` lines), else the ML-100K order."""
    if not path.is_file():
        return GENRES_100K
    pairs = [line.rsplit("|", 1) for line in path.read_text(encoding="latin-1").splitlines() if "|" in line]
    return tuple(name for name, _ in sorted(pairs, key=lambda p: int(p[1])))


def _items(verdicts: core.Verdicts, movie: pa.Array, category: pa.Array) -> pa.Table:
    n = len(movie)
    table = pa.table(
        {
            schema.ITEM_ID: movie,
            schema.CATEGORY_ID: pc.cast(category, pa.string()),
            schema.PRICE: pa.nulls(n, pa.float64()),
            schema.AVAILABLE: pa.repeat(pa.scalar(True), n),
        },
        schema=schema.arrow_schema(schema.ITEMS),
    )
    return table.filter(pa.array(verdicts.accepted))


def _flags_to_items(chunk: core.Chunk, genres: tuple[str, ...]) -> tuple[pa.Table, core.Verdicts]:
    t = chunk.table
    movie = core.as_strings(t.column("movie"))
    flags = [core.as_strings(t.column(f"g{i}")) for i in range(len(genres))]
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_NULL_ID, "movie id", core.blank(movie), movie)
    bad_flag = core.any_of([pc.invert(pc.is_in(f, value_set=pa.array(["0", "1"]))) for f in flags])
    verdicts.check(schema.RULE_BAD_VALUE, "genre flags", bad_flag, pc.binary_join_element_wise(*flags, "|"))
    category = pa.nulls(len(movie), pa.string())
    for flag, name in reversed(list(zip(flags, genres, strict=True))):  # the first flag set wins
        category = pc.if_else(pc.equal(flag, "1"), name, category)
    return _items(verdicts, movie, category), verdicts


def _first_genre(genres: pa.Array) -> pa.Array:
    first = pc.list_element(pc.split_pattern(genres, "|"), 0)
    first = pc.utf8_trim_whitespace(first)
    return pc.if_else(
        pc.or_(pc.equal(first, ""), pc.equal(first, NO_GENRES)), pa.scalar(None, pa.string()), first
    )


def _dat_to_items(chunk: core.Chunk) -> tuple[pa.Table, core.Verdicts]:
    line = core.as_strings(chunk.table.column("line"))
    parts = pc.split_pattern(line, "::")
    fields = pc.list_value_length(parts)
    movie = core.as_strings(pc.list_element(parts, 0))
    genres = pc.extract_regex(line, r"::(?P<genres>[^:]*)$").field("genres")  # after the last '::'
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_MALFORMED_ROW, "::", pc.less(fields, 3), line)
    verdicts.check(schema.RULE_NULL_ID, "MovieID", core.blank(movie), movie)
    return _items(verdicts, movie, _first_genre(pc.fill_null(genres, ""))), verdicts


def _csv_to_items(chunk: core.Chunk) -> tuple[pa.Table, core.Verdicts]:
    movie, genres = (core.as_strings(chunk.table.column(c)) for c in ("movieId", "genres"))
    verdicts = core.Verdicts(chunk)
    verdicts.check(schema.RULE_NULL_ID, "movieId", core.blank(movie), movie)
    return _items(verdicts, movie, _first_genre(genres)), verdicts
