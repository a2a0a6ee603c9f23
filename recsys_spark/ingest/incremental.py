"""The nightly clean: only the source's date partitions that are new or changed.

A raw log grows by date partitions: ``<dataset.source.path>/date=2026-01-05/...``
(the key is ``dataset.source.date_partition``). The state file
(:func:`recsys_spark.io.clean_state_path`) records, for every partition that
``events_clean`` holds, a fingerprint of its files (names, sizes and
modification times) and the files themselves. A run then

1. lists the source and compares: a partition whose fingerprint differs, or
   that is new, is *changed*; one that is gone is *removed*. ``--backfill
   START END`` marks the partitions in that range changed as well;
2. cleans only the changed partitions' files, with the same checks as a full
   clean (:func:`recsys_spark.ingest.cleaning.run_clean`). Their rows are
   checked for duplicates and bots against ``events_clean`` from
   ``clean.dedupe_lookback_days`` before the earliest changed partition on
   (what is already clean stays clean: a repeat of it is the duplicate), and
   users found to be bots by earlier runs stay bots;
3. replaces, in ``events_clean``, whole ``event_date`` partitions: each one
   that gains a row, or held a row from a changed or removed partition's
   files, is rewritten as its other rows plus this run's. ``quarantine`` and
   ``quarantined_files`` lose the rows of those files and gain this run's.
   Nothing is appended blindly, so rerunning a day changes nothing;
4. records the new state last: a run killed before that is redone whole by
   the next one, which first puts back any partition it had set aside
   (:func:`recsys_spark.io.recover_partitions`).

The report's counts cover this run's input (``input = clean + duplicates +
quarantined``, as ever), and the rewritten tables are counted against
``rows kept + rows added`` before they replace anything.

A full clean runs instead, and says why in the report (``full_because``), on
the first run, when ``clean.incremental`` is false, when the source has no
date partitions, when ``events_clean`` or the state is missing, and when a
setting that decides what is clean (``dataset.source``, ``clean``) changed
since the state was written.

Against a full clean over the same files, the one difference by design: a
user who turns into a bot keeps the rows cleaned before (in partitions not
rewritten); ``--backfill`` over those days, or a full run, moves them.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import re
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.config import Config
from recsys_spark.errors import UserError
from recsys_spark.ingest import cleaning, sources
from recsys_spark.schemas import EVENT_DATE, EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES, SOURCE_FILE, Table

STATE_VERSION = 1
# Settings that do not change what a row becomes: changing them keeps the state.
_SETTINGS_NOT_IN_KEY = ("incremental", "dedupe_lookback_days")


@dataclasses.dataclass(frozen=True)
class Partition:
    """One date partition of the source: its files, unlisted entries, and their fingerprint."""

    date: str
    files: tuple[tuple[str, int], ...]  # (path, size)
    unlisted: tuple[tuple[str, str], ...]  # (path, error)
    # Names below the source root, sizes and modification times: a file added,
    # removed, rewritten or touched changes it; moving the whole source does not.
    fingerprint: str


def date_partitions(listing: io.SourceListing, key: str | None) -> dict[str, Partition] | None:
    """The listing's files by ``key=YYYY-MM-DD`` folder; None when a file lies in no such folder."""
    if not key:
        return None
    pattern = re.compile(rf"/{re.escape(key)}=(\d{{4}}-\d{{2}}-\d{{2}})(/|$)")
    found: dict[str, dict[str, list]] = {}
    for kind, entries in (("files", listing.files), ("unlisted", listing.unlisted)):
        for path, detail in entries:
            if not (m := pattern.search(path)):
                return None
            part = found.setdefault(m[1], {"files": [], "unlisted": [], "print": []})
            part[kind].append((path, detail))
            part["print"].append([path[m.start():], detail, listing.modified.get(path, 0)])
    return {
        d: Partition(d, tuple(p["files"]), tuple(p["unlisted"]),
                     hashlib.sha256(json.dumps(sorted(p["print"])).encode()).hexdigest()[:16])
        for d, p in sorted(found.items())
    }


def settings_key(cfg: Config) -> str:
    """A hash of the settings that decide what a source row becomes."""
    clean = {k: v for k, v in dataclasses.asdict(cfg.clean).items() if k not in _SETTINGS_NOT_IN_KEY}
    source = {k: v for k, v in dataclasses.asdict(cfg.dataset.source).items() if k != "path"}  # checked apart
    text = json.dumps({"source": source, "clean": clean}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class Plan:
    """What a run cleans: all of the source (``full_because`` says why) or the changed partitions."""

    full_because: str | None
    changed: list[str] = dataclasses.field(default_factory=list)
    removed: list[str] = dataclasses.field(default_factory=list)
    unchanged: int = 0


def plan(cfg: Config, partitions: dict[str, Partition] | None, state: dict | None, *, events_clean_exists: bool,
         backfill: tuple[str, str] | None = None) -> Plan:
    """Decide between a full and an incremental clean, and which partitions the latter cleans."""
    if not cfg.clean.incremental:
        return Plan("clean.incremental is false")
    if partitions is None:
        key = cfg.dataset.source.date_partition
        return Plan(f"the source has no {key}=YYYY-MM-DD folders" if key else "dataset.source.date_partition is null")
    if state is None:
        return Plan("no earlier clean recorded (first run)")
    if not events_clean_exists:
        return Plan("events_clean is missing")
    if state.get("version") != STATE_VERSION or state.get("source_path") != cfg.dataset.source.path:
        return Plan("the state describes another source or version")
    if state.get("settings") != settings_key(cfg):
        return Plan("dataset.source or clean settings changed since the last clean")
    before = state["partitions"]
    changed = {d for d, p in partitions.items() if before.get(d, {}).get("fingerprint") != p.fingerprint}
    if backfill:
        start, end = backfill
        changed |= {d for d in partitions if start <= d <= end}
    removed = sorted(d for d in before if d not in partitions)
    return Plan(None, sorted(changed), removed, len(partitions) - len(changed))


def run(
    spark: SparkSession,
    cfg: Config,
    *,
    reference_time: dt.datetime | str | None = None,
    run_id: str | None = None,
    backfill: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """Clean what changed in the source since the last run (or all of it); returns the report.

    Args:
        backfill: (START, END) dates, inclusive: clean these partitions again
            even when unchanged.
    """
    if backfill and backfill[0] > backfill[1]:
        raise UserError(f"--backfill {backfill[0]} {backfill[1]}: the start is after the end")
    wh, src = cfg.warehouse, cfg.dataset.source
    run_id = run_id or cleaning.new_run_id()
    clean_path = io.table_path(wh, EVENTS_CLEAN)
    # A run killed while swapping partitions left some aside: back first, before anything reads the table.
    restored = io.recover_partitions(spark, clean_path)
    listing = sources.list_files(spark, src)
    partitions = date_partitions(listing, src.date_partition)
    state = io.read_json_if_exists(spark, io.clean_state_path(wh))
    decided = plan(cfg, partitions, state, events_clean_exists=io.path_exists(spark, clean_path), backfill=backfill)
    extra: dict[str, Any] = {"restored_partitions": restored} if restored else {}

    if decided.full_because is not None:
        def write_all(spark, cfg, outputs, counts, classified) -> dict[str, Any]:
            cleaning.write_replacing(spark, cfg, outputs, counts)
            if partitions is not None:
                _save_state(spark, cfg, partitions, {}, set(partitions), classified.bot_user_ids, run_id)
            return {"mode": "full", "full_because": decided.full_because, **extra}

        batch = cleaning.Batch(listing=listing, write=write_all)
        return cleaning.run_clean(spark, cfg, reference_time=reference_time, run_id=run_id, batch=batch)

    touched = decided.changed + decided.removed
    summary = {"mode": "incremental", "partitions_cleaned": decided.changed, "partitions_removed": decided.removed,
               "partitions_unchanged": decided.unchanged, **extra}
    if not touched:
        return _nothing_new(spark, cfg, run_id, summary)
    before = state["partitions"]
    # The files whose rows this run replaces: those of the touched partitions, as cleaned last time and as listed now.
    replaced = {f for d in touched for f in before.get(d, {}).get("files", [])}
    replaced |= {_uri(spark, p) for d in decided.changed for p, _ in partitions[d].files + partitions[d].unlisted}
    events_clean = io.read_table(spark, wh, EVENTS_CLEAN)
    lookback = dt.date.fromisoformat(min(touched)) - dt.timedelta(days=cfg.clean.dedupe_lookback_days)
    existing = events_clean.where((F.col(EVENT_DATE) >= F.lit(lookback)) & ~_from(replaced))
    known_bots = tuple(state.get("bot_users", []))
    if not any(partitions[d].files or partitions[d].unlisted for d in decided.changed):
        return _nothing_new(spark, cfg, run_id, summary, removed_only=replaced)

    def write_changed(spark, cfg, outputs, counts, classified) -> dict[str, Any]:
        written = _replace(spark, cfg, outputs, counts, replaced)
        _save_state(spark, cfg, partitions, before, set(decided.changed), classified.bot_user_ids + list(known_bots),
                    run_id)
        return {**summary, **written}

    batch = cleaning.Batch(
        listing=io.SourceListing(
            files=[f for d in decided.changed for f in partitions[d].files],
            unlisted=[u for d in decided.changed for u in partitions[d].unlisted],
            modified=listing.modified,
        ),
        existing=existing,
        known_bots=known_bots,
        write=write_changed,
    )
    return cleaning.run_clean(spark, cfg, reference_time=reference_time, run_id=run_id, batch=batch)


def _uri(spark: SparkSession, path: str) -> str:
    # As input_file_name() names a file: what events_clean.source_file holds.
    return io.file_uri(spark, path)


def _from(files: set[str]):
    """Column: the row's source_file is one of ``files``."""
    return F.col(SOURCE_FILE).isin(sorted(files)) if files else F.lit(False)


def _replace(spark: SparkSession, cfg: Config, outputs: dict[Table, DataFrame], counts: cleaning.RowCounts,
             replaced: set[str]) -> dict[str, Any]:
    """Put this run's rows in place of those from the ``replaced`` files.

    ``events_clean``: only the event dates that gain or lose a row are
    rewritten; ``quarantine`` and ``quarantined_files`` (small) are rewritten whole.
    """
    wh = cfg.warehouse
    old_clean = io.read_table(spark, wh, EVENTS_CLEAN)
    new_clean = outputs[EVENTS_CLEAN]
    # One pass over events_clean's source_file column: where the replaced files' rows lie, and how many.
    leaving = {r[0]: r[1] for r in old_clean.where(_from(replaced)).groupBy(EVENT_DATE).count().collect()}
    dates = set(leaving) | {r[0] for r in new_clean.select(EVENT_DATE).distinct().collect()}
    affected = sorted(dates)
    kept_clean = old_clean.where(F.col(EVENT_DATE).isin(affected) & ~_from(replaced)) if affected else None
    frames, expected = {}, {}
    if kept_clean is not None:
        frames[EVENTS_CLEAN] = kept_clean.unionByName(new_clean)
        expected[EVENTS_CLEAN] = kept_clean.count() + counts.clean
    for table, added in ((QUARANTINE, counts.quarantined), (QUARANTINED_FILES, None)):
        old = io.read_table_if_exists(spark, wh, table)
        kept = old.where(~_from(replaced)) if old is not None else None
        frames[table] = kept.unionByName(outputs[table]) if kept is not None else outputs[table]
        added = outputs[table].count() if added is None else added
        expected[table] = (kept.count() if kept is not None else 0) + added
    staged = cleaning.write_staged(spark, cfg, frames, expected)
    for table in (QUARANTINE, QUARANTINED_FILES):
        io.publish_directory(spark, staged[table], io.table_path(wh, table))
    if EVENTS_CLEAN in staged:
        parts = [f"{EVENT_DATE}={d.isoformat()}" for d in affected]
        io.replace_partitions(spark, staged[EVENTS_CLEAN], io.table_path(wh, EVENTS_CLEAN), parts)
    return {
        "event_dates_rewritten": [d.isoformat() for d in affected],
        "events_clean_rows_replaced": sum(leaving.values()),
        "events_clean_rows_in_rewritten_dates": expected.get(EVENTS_CLEAN, 0),
    }


def _nothing_new(spark: SparkSession, cfg: Config, run_id: str, summary: dict[str, Any], *,
                 removed_only: set[str] | None = None) -> dict[str, Any]:
    """The report of a run with no file to read: nothing changed, or partitions were only removed."""
    counts = cleaning.RowCounts(0, 0, 0, 0, {}, {}, [])
    report = cleaning.clean_report(cfg, counts, sources.SourceFiles([], []), run_id=run_id,
                                   ref=dt.datetime.now(dt.timezone.utc))
    report.update(summary)
    if removed_only:
        empty = {t: spark.createDataFrame([], t.schema) for t in (EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES)}
        report.update(_replace(spark, cfg, empty, counts, removed_only))
        state = io.read_json(spark, io.clean_state_path(cfg.warehouse))
        partitions = {d: p for d, p in state["partitions"].items() if d not in summary["partitions_removed"]}
        io.write_json(spark, io.clean_state_path(cfg.warehouse), {**state, "partitions": partitions, "run_id": run_id})
    io.write_json(spark, io.report_path(cfg.warehouse, "clean_events", run_id), report)
    return report


def _save_state(spark: SparkSession, cfg: Config, partitions: dict[str, Partition], before: dict[str, dict],
                cleaned: set[str], bots: list[str], run_id: str) -> None:
    """Record what ``events_clean`` now holds: the commit point of a run (written after the tables)."""
    entries = {}
    for d, p in partitions.items():
        if d in cleaned:
            entries[d] = {"fingerprint": p.fingerprint,
                          "files": sorted(_uri(spark, f) for f, _ in p.files + p.unlisted)}
        elif d in before:
            entries[d] = before[d]
    io.write_json(spark, io.clean_state_path(cfg.warehouse), {
        "version": STATE_VERSION,
        "source_path": cfg.dataset.source.path,
        "settings": settings_key(cfg),
        "partitions": entries,
        "bot_users": sorted(set(bots)),
        "run_id": run_id,
    })
