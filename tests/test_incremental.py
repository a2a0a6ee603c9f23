"""Night after night: the incremental clean (recsys_spark/ingest/incremental.py).

Three days of a synthetic log arrive one date folder a night, with new users
and items on days 2 and 3, and on day 3 an event of day 1 that arrived late
and a resent copy of a day-1 event. After the third night every table must
equal what a from-scratch run over the same three folders builds.
"""
from __future__ import annotations

import datetime as dt
import gzip
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from recsys_spark import io
from recsys_spark.ingest import incremental
from recsys_spark.schemas import (
    EVENTS_CLEAN,
    INTERACTIONS,
    ITEM_INDEX_TABLE,
    ITEMS,
    QUARANTINE,
    QUARANTINED_FILES,
    USER_INDEX_TABLE,
    USERS,
)
from tests.conftest import TINY_SYNTHETIC, load_job, synthetic_job_argv

pytestmark = pytest.mark.spark

DAYS = ["2026-01-01", "2026-01-02", "2026-01-03"]
REFERENCE = "2026-01-10T00:00:00Z"


def line(eid, uid, iid, etype, ts, sid="s-extra", val=0) -> str:
    return json.dumps({"eid": eid, "uid": uid, "iid": iid, "type": etype, "ts": ts, "val": val, "sid": sid})


def arrive(log: Path, source: Path, day: str, extra: list[str]) -> None:
    """Night ``day``'s folder lands in the source, plus a file of ``extra`` lines."""
    shutil.copytree(log / f"date={day}", source / f"date={day}")
    if extra:
        (source / f"date={day}" / "extra.json").write_text("\n".join(extra) + "\n")
    if day == DAYS[1]:  # a file cut off in transfer: quarantined as a file, and still listed after later nights
        whole = gzip.compress(("\n".join(extra) + "\n").encode())
        (source / f"date={day}" / "cut.json.gz").write_bytes(whole[: len(whole) // 2])


def night(argv: list[str], day: str, *more: str) -> dict:
    report = load_job("clean_events").main(argv + ["--reference-time", REFERENCE, *more])
    load_job("build_tables").main(argv + ["--set", f"run_date={day}"])
    return report


def hashable(value):
    if isinstance(value, (bytearray, bytes)):
        return bytes(value)
    if hasattr(value, "__len__") and not isinstance(value, str):
        return tuple(value)  # arrays (genres)
    return value


def table(spark, wh: Path, t, drop=()) -> pd.DataFrame:
    df = io.read_table(spark, str(wh), t).toPandas().drop(columns=list(drop))
    for c in df.columns[df.dtypes == object]:
        df[c] = df[c].map(hashable)
    return df.sort_values(list(df.columns)).reset_index(drop=True)


@pytest.fixture(scope="module")
def three_nights(spark, tmp_path_factory):
    root = tmp_path_factory.mktemp("incremental")
    sizes = [*TINY_SYNTHETIC, "synthetic.days=3", "synthetic.start_date=2026-01-01"]
    gen_argv, log, _ = synthetic_job_argv(root / "generated", sizes)
    load_job("generate_events").main(gen_argv)
    source = root / "source"
    source.mkdir()
    argv, _, wh = synthetic_job_argv(root / "nightly", sizes)
    argv = [a.replace(str(root / "nightly" / "raw"), str(source)) for a in argv]

    day1_line = next(p for p in sorted((log / f"date={DAYS[0]}").iterdir()) if p.name.startswith("part-")).read_text()
    resent = day1_line.splitlines()[0]  # a day-1 event sent again two days later: a duplicate by event id
    known = json.loads(resent)
    extras = {
        DAYS[0]: [],
        # A new user on a new item, and that item again by a known user.
        DAYS[1]: [line("new-2a", "u_new_day2", "i_new_day2", "purchase", "2026-01-02T10:00:00Z"),
                  line("new-2b", known["uid"], "i_new_day2", "click", "2026-01-02T11:00:00Z")],
        DAYS[2]: [line("new-3a", "u_new_day3", known["iid"], "view", "2026-01-03T23:30:00Z"),
                  line("new-3b", "u_new_day3", "i_new_day3", "click", "2026-01-03T23:31:00Z"),
                  # late: an event of day 1 (known user and item) that reached the log on day 3
                  line("late-day1", known["uid"], known["iid"], "add_to_cart", "2026-01-01T12:00:00Z"),
                  resent],
    }
    reports = []
    for day in DAYS:
        arrive(log, source, day, extras[day])
        reports.append(night(argv, day))
    # From scratch: the same three folders, a new warehouse, one full clean.
    scratch_argv = [a.replace(str(wh), str(root / "scratch")) for a in argv]
    scratch = night(scratch_argv, DAYS[-1])
    return dict(spark=spark, wh=wh, scratch_wh=root / "scratch", argv=argv, reports=reports, scratch=scratch,
                source=source, log=log)


def test_each_night_cleans_only_its_new_folder(three_nights):
    day1, day2, day3 = three_nights["reports"]
    assert day1["mode"] == "full" and "first run" in day1["full_because"]
    for report, day in ((day2, DAYS[1]), (day3, DAYS[2])):
        assert report["mode"] == "incremental"
        assert report["partitions_cleaned"] == [day]
        assert report["input_rows"] == report["clean_rows"] + report["duplicates"] + report["quarantined_rows"]
    # the late event rewrote day 1's events; the resent event is a duplicate of day 1's copy
    assert DAYS[0] in day3["event_dates_rewritten"] and DAYS[2] in day3["event_dates_rewritten"]
    assert DAYS[1] not in day3["event_dates_rewritten"]
    assert day3["duplicates"] >= 1
    assert day2["quarantined_files"] == 1 and day3["quarantined_files"] == 0
    # Every raw line of every night is accounted for, and together they are the whole log.
    assert sum(r["input_rows"] for r in (day1, day2, day3)) == three_nights["scratch"]["input_rows"]
    assert sum(r["clean_rows"] for r in (day1, day2, day3)) == three_nights["scratch"]["clean_rows"]


@pytest.mark.parametrize("t", [EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES, INTERACTIONS, USERS, ITEMS,
                               USER_INDEX_TABLE, ITEM_INDEX_TABLE], ids=lambda t: t.name)
def test_three_nights_equal_one_run_from_scratch(three_nights, t):
    spark = three_nights["spark"]
    # run_id names the run that wrote a quarantine row; first_indexed the night an id arrived.
    drop = {QUARANTINE: ["run_id"], QUARANTINED_FILES: ["run_id"], USER_INDEX_TABLE: ["first_indexed"],
            ITEM_INDEX_TABLE: ["first_indexed"]}.get(t, [])
    nightly, scratch = table(spark, three_nights["wh"], t, drop), table(spark, three_nights["scratch_wh"], t, drop)
    assert len(nightly) > 0
    pd.testing.assert_frame_equal(nightly, scratch)


def test_new_ids_get_new_index_rows_and_known_ids_keep_theirs(three_nights):
    users = table(three_nights["spark"], three_nights["wh"], USER_INDEX_TABLE).set_index("user_id")
    items = table(three_nights["spark"], three_nights["wh"], ITEM_INDEX_TABLE).set_index("item_id")
    assert str(users.loc["u_new_day2", "first_indexed"]) == DAYS[1]
    assert str(users.loc["u_new_day3", "first_indexed"]) == DAYS[2]
    assert str(items.loc["i_new_day3", "first_indexed"]) == DAYS[2]
    # indexes are dense and the newest ids have the largest
    assert sorted(users.user_index) == list(range(len(users)))
    assert users.loc["u_new_day3", "user_index"] > users[users.first_indexed.astype(str) == DAYS[0]].user_index.max()


def test_users_new_tonight_get_recommendations_from_popularity(three_nights):
    """Day 3's new user has only test-fold events (the last hour): cold, served by popularity."""
    import pyarrow.parquet as pq

    argv = three_nights["argv"] + ["--set", f"run_date={DAYS[-1]}", "--set", "recommend.n=5",
                                   "--set", "recommend.min_coverage=0.0", "--set", "recommend.max_metric_drop=1.0"]
    load_job("split").main(argv)
    load_job("train_baselines").main(argv + ["--models", "popularity,popularity_recent"])
    load_job("recommend").main(argv + ["--models", "popularity,popularity_recent"])
    recs = pq.read_table(io.recommendations_run_path(str(three_nights["wh"]), DAYS[-1])).to_pandas()
    mine = recs[recs.user_id == "u_new_day3"]
    # Served by popularity: the cold-start fallback, or the serving model when popularity is the best trained.
    assert len(mine) == 5
    assert set(mine.source) == {"popularity_fallback"} or set(mine.model) <= {"popularity", "popularity_recent"}
    assert known_items_of(three_nights, "u_new_day3").isdisjoint(mine.item_id)


def known_items_of(three_nights, user: str) -> set[str]:
    events = table(three_nights["spark"], three_nights["wh"], EVENTS_CLEAN)
    return set(events[events.user_id == user].item_id)


def test_a_night_with_nothing_new_changes_nothing_and_a_backfill_rebuilds_the_same(three_nights, tmp_path):
    spark, wh, argv = three_nights["spark"], three_nights["wh"], three_nights["argv"]
    before = {t.name: table(spark, wh, t, ["run_id"] if t is QUARANTINE else []) for t in (EVENTS_CLEAN, QUARANTINE)}
    quiet = load_job("clean_events").main(argv + ["--reference-time", REFERENCE])
    assert quiet["mode"] == "incremental" and quiet["partitions_cleaned"] == [] and quiet["input_rows"] == 0
    backfill = load_job("clean_events").main(argv + ["--reference-time", REFERENCE, "--backfill", DAYS[0], DAYS[1]])
    assert backfill["partitions_cleaned"] == DAYS[:2]
    for t in (EVENTS_CLEAN, QUARANTINE):
        after = table(spark, wh, t, ["run_id"] if t is QUARANTINE else [])
        pd.testing.assert_frame_equal(after, before[t.name])
    state = json.loads(Path(io.clean_state_path(str(wh))).read_text())
    assert sorted(state["partitions"]) == DAYS


def test_a_changed_folder_replaces_its_rows(three_nights, tmp_path):
    """A file rewritten in an old folder replaces, not adds to, what it held (a copy of the warehouse)."""
    spark = three_nights["spark"]
    source, wh = tmp_path / "source", tmp_path / "wh"
    shutil.copytree(three_nights["source"], source)
    shutil.copytree(three_nights["wh"], wh)
    argv = [a.replace(str(three_nights["source"]), str(source)).replace(str(three_nights["wh"]), str(wh))
            for a in three_nights["argv"]]
    state = json.loads(Path(io.clean_state_path(str(wh))).read_text())
    state["source_path"] = str(source)  # the copy describes the copied source
    Path(io.clean_state_path(str(wh))).write_text(json.dumps(state))
    Path(io.clean_state_path(str(wh))).with_name(".clean_events.json.crc").unlink()  # Hadoop's checksum of the old text
    extra = source / f"date={DAYS[1]}" / "extra.json"
    extra.write_text(line("new-2a", "u_new_day2", "i_new_day2", "purchase", "2026-01-02T10:00:00Z") + "\n")
    report = load_job("clean_events").main(argv + ["--reference-time", REFERENCE])
    assert report["mode"] == "incremental" and report["partitions_cleaned"] == [DAYS[1]]
    events = table(spark, wh, EVENTS_CLEAN)
    assert "new-2a" in set(events.event_id) and "new-2b" not in set(events.event_id)
    old = table(spark, three_nights["wh"], EVENTS_CLEAN)
    assert len(events) == len(old) - 1


def test_a_partition_swap_killed_midway_is_put_back_before_the_next_read(spark, tmp_path):
    wh = str(tmp_path / "wh")
    rows = [(f"e{i}", "u1", "i1", "click", dt.datetime(2026, 1, d, 10), None, None, "f", dt.date(2026, 1, d))
            for i, d in enumerate((1, 2, 2))]
    io.write_table(spark.createDataFrame(rows, EVENTS_CLEAN.schema), wh, EVENTS_CLEAN)
    final = io.table_path(wh, EVENTS_CLEAN)
    # What a killed replace_partitions leaves: a partition moved aside, its replacement never moved in.
    io.rename_path(spark, f"{final}/event_date=2026-01-02", f"{final}._old-dead/event_date=2026-01-02")
    assert io.read_table(spark, wh, EVENTS_CLEAN).count() == 1
    assert io.recover_partitions(spark, final) == ["event_date=2026-01-02"]
    assert io.read_table(spark, wh, EVENTS_CLEAN).count() == 3
    assert not [n for n in Path(final).parent.iterdir() if n.name.startswith("events_clean._")]


def test_sources_without_date_folders_are_cleaned_whole(spark):
    from recsys_spark.config import load_config

    cfg = load_config(dataset="synthetic")
    listing = io.SourceListing(files=[("file:///x/ratings.csv", 10)], unlisted=[])
    assert incremental.date_partitions(listing, "date") is None
    decided = incremental.plan(cfg, None, None, events_clean_exists=True)
    assert decided.full_because == "the source has no date=YYYY-MM-DD folders"
    listing = io.SourceListing(files=[("file:///x/date=2026-01-02/a.json", 10), ("file:///x/date=2026-01-01/b", 5)],
                               unlisted=[], modified={"file:///x/date=2026-01-02/a.json": 1})
    parts = incremental.date_partitions(listing, "date")
    assert sorted(parts) == ["2026-01-01", "2026-01-02"]
