"""The synthetic generator: deterministic, heavy-tailed, with planted taste, sequences, drift, sessions and dirt."""
from __future__ import annotations

import collections
import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import TINY_SYNTHETIC as TINY
from recsys_spark import schemas
from recsys_spark.ingest import synthetic
from recsys_spark.config import load_config

pytestmark = pytest.mark.spark

ISO_MS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")


def tiny_config(out: Path, *extra: str):
    return load_config(dataset="synthetic", overrides=[*TINY, f"dataset.source.path={out}", *extra])


def read_files(out: Path) -> dict[str, bytes]:
    """Relative path (without the per-write uuid in part file names) -> decompressed bytes."""
    files = {}
    for p in sorted(out.rglob("part-*")):
        name = re.sub(r"part-(\d+)-[0-9a-f-]+", r"part-\1", str(p.relative_to(out)))
        data = p.read_bytes()
        files[name] = gzip.decompress(data) if p.suffix == ".gz" else data
    return files


def lines_of(out: Path) -> list[str]:
    return [line for data in read_files(out).values() for line in data.decode().splitlines()]


@pytest.fixture(scope="module")
def generated(spark, tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic") / "events"
    cfg = tiny_config(out)
    manifest = synthetic.write_events(spark, cfg)
    lines = lines_of(out)
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            pass
    return cfg, manifest, out, lines, parsed


@pytest.fixture(scope="module")
def clean_events(generated):
    """The lines no dirty kind touched, bots and re-sends excluded, as arrays."""
    cfg, manifest, _, _, parsed = generated
    bots = set(manifest["bot_users"])
    seen, rows = set(), []
    for r in parsed:
        if (
            r.get("uid") and r.get("iid") and r.get("type") in schemas.EVENT_TYPES and r["uid"] not in bots
            and str(r.get("ts", "")).startswith("2026-") and ISO_MS_Z.match(r["ts"]) and r.get("val") != "five"
            and r["eid"] not in seen
        ):
            seen.add(r["eid"])
            rows.append(r)
    return rows


def test_output_layout_and_manifest(generated):
    cfg, manifest, out, lines, _ = generated
    dates = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert dates[0] == "date=2026-01-01" and dates[-1] == "date=2026-03-01" and len(dates) == cfg.synthetic.days
    assert (out / synthetic.MANIFEST_NAME).exists()
    assert json.loads((out / synthetic.MANIFEST_NAME).read_text()) == manifest
    assert len(lines) == manifest["total_lines"] == 4000 + manifest["dirty"]["duplicate"] + 2 * 300
    # dirty_share 2% of 4000 events in 10 equal parts
    assert set(manifest["dirty"].values()) == {8}


def test_dirty_kinds_are_in_the_lines_as_the_manifest_says(generated):
    _, manifest, _, lines, parsed = generated
    dirty = manifest["dirty"]
    assert len(lines) - len(parsed) == dirty["malformed_json"]
    counts = collections.Counter(lines)
    assert sum(n - 1 for n in counts.values() if n > 1) == dirty["duplicate"]
    assert sum("uid" not in r for r in parsed) == dirty["missing_user_key"]
    assert sum(r.get("uid") == "" for r in parsed) == dirty["empty_user_id"]
    assert sum("iid" in r and r["iid"] is None for r in parsed) == dirty["null_item_id"]
    assert sum(r["type"] == "hover" for r in parsed) == dirty["unknown_event_type"]
    assert sum(r["ts"].startswith("2100-") for r in parsed) == dirty["future_timestamp"]
    assert sum(r["ts"].startswith("1970-") for r in parsed) == dirty["ancient_timestamp"]
    assert sum(not ISO_MS_Z.match(r["ts"]) for r in parsed) == dirty["unparseable_timestamp"]
    assert sum(r.get("val") == "five" for r in parsed) == dirty["bad_value_type"]
    by_user = collections.Counter(r.get("uid") for r in parsed)
    assert all(by_user[u] == 300 for u in manifest["bot_users"])


def test_same_seed_identical_files_other_seed_different(spark, generated, tmp_path):
    _, _, out, _, _ = generated
    again = tmp_path / "again"
    synthetic.write_events(spark, tiny_config(again))
    assert read_files(again) == read_files(out)  # same names (part index, date) and bytes

    other = tmp_path / "other"
    synthetic.write_events(spark, tiny_config(other, "synthetic.seed=7", "synthetic.gzip=true"))
    assert all(p.name.endswith(".gz") for p in other.rglob("part-*"))
    assert set(lines_of(other)) != set(lines_of(out))
    assert len(lines_of(other)) == synthetic.expected_manifest(tiny_config(other, "synthetic.seed=7").synthetic)["total_lines"]


def test_blocks_do_not_depend_on_partitions(spark, generated):
    cfg, _, _, lines, _ = generated
    one = tiny_config(Path("unused"), "synthetic.partitions=1").synthetic
    generated_lines = [r.value for r in synthetic.generate_events(spark, one).select("value").collect()]
    assert sorted(generated_lines) == sorted(lines)


def test_clean_lines_are_well_formed(clean_events, generated):
    cfg, _, _, _, _ = generated
    assert all(ISO_MS_Z.match(r["ts"]) for r in clean_events)
    assert min(r["ts"] for r in clean_events) >= "2026-01-01T00:00:00.000Z"
    assert max(r["ts"] for r in clean_events) < "2026-03-02T00:00:00.000Z"  # 60 days
    ratings = [r for r in clean_events if r["type"] == "rating"]
    assert ratings and all(r["val"] in (1, 2, 3, 4, 5) for r in ratings)
    assert all("val" not in r for r in clean_events if r["type"] != "rating")
    types = collections.Counter(r["type"] for r in clean_events)
    assert types["view"] > types["click"] > types["add_to_cart"] > types["purchase"] > 0  # a funnel


def test_heavy_tails(clean_events):
    for key in ("iid", "uid"):
        counts = np.sort(np.array(list(collections.Counter(r[key] for r in clean_events).values())))[::-1]
        top = counts[: max(len(counts) // 10, 1)].sum() / counts.sum()
        # Uniform would give 10%; Zipf(1.1) items and Pareto(1.3) users give far more.
        assert top > 0.3, (key, top)


def test_planted_taste_structure(generated, clean_events):
    cfg, _, _, _, _ = generated
    model = synthetic.planted_model(cfg.synthetic)
    users = np.array([int(r["uid"][1:]) for r in clean_events])
    items = np.array([int(r["iid"][1:]) for r in clean_events])

    def in_taste(item_clusters):
        match = model.user_clusters[users] == item_clusters[:, None]
        return (match & (model.user_cluster_weights[users] > 0)).any(axis=1)

    inside = in_taste(model.item_cluster[items])
    # Same users, items' clusters shuffled: what chance alone gives.
    chance = in_taste(np.random.default_rng(0).permutation(model.item_cluster[items]))
    assert inside.mean() > 0.8  # taste_strength 0.8 plus global draws that land inside
    assert inside.mean() > chance.mean() + 0.3

    ratings = np.array([r["type"] == "rating" for r in clean_events])
    values = np.array([r.get("val", 0) for r in clean_events], dtype=float)
    assert values[ratings & inside].mean() > values[ratings & ~inside].mean() + 0.5


def test_no_taste_means_no_structure():
    cfg = tiny_config(Path("unused"), "synthetic.taste_strength=0.0", "synthetic.dirty_share=0.0").synthetic
    model = synthetic.planted_model(cfg)
    df = synthetic.generate_block(cfg, 0)
    recs = [json.loads(v) for v in df["value"]]
    users = np.array([int(r["uid"][1:]) for r in recs])
    items = np.array([int(r["iid"][1:]) for r in recs])
    match = (model.user_clusters[users] == model.item_cluster[items][:, None]) & (model.user_cluster_weights[users] > 0)
    k = (model.user_cluster_weights[users] > 0).sum(axis=1)
    # Without taste an item's cluster is independent of the user: about k/num_clusters inside.
    assert abs(match.any(axis=1).mean() - (k / cfg.num_clusters).mean()) < 0.1


def test_drift_newer_items_gain_later(generated, clean_events):
    cfg, _, _, _, _ = generated
    model = synthetic.planted_model(cfg.synthetic)
    items = np.array([int(r["iid"][1:]) for r in clean_events])
    day = np.array([int(r["ts"][8:10]) + 31 * (int(r["ts"][5:7]) - 1) for r in clean_events])
    launched_later = model.item_launch_period[items] >= 0
    early, late = launched_later[day < 20].mean(), launched_later[day >= 40].mean()
    assert late > early + 0.15, (early, late)


def test_sessions(clean_events):
    by_user = collections.defaultdict(list)
    for r in clean_events:
        by_user[r["uid"]].append((r["ts"], r["sid"]))
    within, between = [], []
    for events in by_user.values():
        events.sort()
        t = np.array([np.datetime64(ts[:-1], "ms").astype(np.int64) for ts, _ in events])
        sid = [s for _, s in events]
        same = np.array([a == b for a, b in zip(sid[:-1], sid[1:])])
        gaps = np.diff(t)
        within.extend(gaps[same])
        between.extend(gaps[~same])
        # Sessions do not interleave: a session's events are contiguous in time.
        assert len(set(sid)) == 1 + int((~same).sum())
    within, between = np.array(within), np.array(between)
    assert within.min() >= 1000 and np.median(within) < 5 * 60_000  # seconds to minutes apart
    assert between.min() >= synthetic.SESSION_BREAK_MS


def user_sequences(events) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Users, items and session ids of ``events`` (JSON records), by user then time."""
    events = sorted(events, key=lambda r: (int(r["uid"][1:]), r["ts"]))
    users = np.array([int(r["uid"][1:]) for r in events])
    items = np.array([int(r["iid"][1:]) for r in events])
    return users, items, np.array([r["sid"] for r in events])


def successor_hits(model, users, items, sessions) -> tuple[float, float]:
    """Share of consecutive in-session pairs (i, j) with j a planted successor of i,
    and the same share with the i's shuffled (chance)."""
    same = (users[1:] == users[:-1]) & (sessions[1:] == sessions[:-1])
    prev, nxt = items[:-1][same], items[1:][same]
    shuffled = np.random.default_rng(0).permutation(prev)
    return ((model.item_successors[prev] == nxt[:, None]).any(axis=1).mean(),
            (model.item_successors[shuffled] == nxt[:, None]).any(axis=1).mean())


def test_planted_successors_follow_each_other_in_sessions(generated, clean_events):
    cfg, _, _, _, _ = generated
    model = synthetic.planted_model(cfg.synthetic)
    succ = model.item_successors
    assert succ.shape == (cfg.synthetic.num_items, synthetic.SUCCESSORS_PER_ITEM)
    assert not (succ == np.arange(len(succ))[:, None]).any()  # never an item's own successor
    assert (model.item_cluster[succ] == model.item_cluster[:, None]).mean() > 0.8  # mostly in its cluster
    planted, chance = successor_hits(model, *user_sequences(clean_events))
    # sequential_share 0.5 of later events follow the chain (less the successors
    # not launched yet); 3 successors of 200 items give chance about 1.5%.
    assert planted > 0.35 and chance < 0.1, (planted, chance)


def test_a_first_order_chain_predicts_the_next_item_far_better_than_popularity(generated, clean_events):
    """Each user's last event held out; transitions and popularity counted on the rest."""
    cfg, _, _, _, _ = generated
    n_items = cfg.synthetic.num_items
    users, items, _ = user_sequences(clean_events)
    last = np.r_[users[1:] != users[:-1], True]
    first = np.r_[True, users[1:] != users[:-1]]
    train = ~last
    pair = train[:-1] & train[1:] & (users[1:] == users[:-1])
    counts = np.zeros((n_items, n_items))
    np.add.at(counts, (items[:-1][pair], items[1:][pair]), 1)
    popularity = np.bincount(items[train], minlength=n_items) / train.sum()
    held_out = np.flatnonzero(last & ~first)
    truth = items[held_out]
    k = 3
    # The chain from the user's last training item, popularity breaking ties.
    chain_top = np.argsort(-(counts[items[held_out - 1]] + 1e-3 * popularity), axis=1, kind="stable")[:, :k]
    chain = (chain_top == truth[:, None]).any(axis=1).mean()
    pop = np.isin(truth, np.argsort(-popularity, kind="stable")[:k]).mean()
    # Taste alone gives the chain a small lead (1.3x with sequential_share=0 on this log).
    assert len(held_out) > 200 and chain > 2 * pop, (chain, pop)


def test_sequential_share_changes_only_later_items_in_sessions():
    def block(share):
        cfg = tiny_config(Path("unused"), "synthetic.dirty_share=0.0", f"synthetic.sequential_share={share}").synthetic
        return cfg, [json.loads(v) for v in synthetic.generate_block(cfg, 0)["value"]]

    cfg, without = block(0.0)
    _, with_chain = block(0.5)
    assert len(without) == len(with_chain)
    for a, b in zip(without, with_chain):
        assert {k: v for k, v in a.items() if k not in ("iid", "val")} == {
            k: v for k, v in b.items() if k not in ("iid", "val")}
    # Same users and times, so the same order: the logs differ in items alone.
    users, items, sessions = user_sequences(without)
    changed = items != user_sequences(with_chain)[1]
    later = np.r_[False, (users[1:] == users[:-1]) & (sessions[1:] == sessions[:-1])]
    assert not changed[~later].any()  # a session's first event keeps its draw
    assert 0.3 < changed[later].mean() < 0.5  # half follow the chain, some by chance to the same item
    # Without the chain, consecutive items are planted successors only by chance
    # (a little above the shuffled chance: successors share their item's cluster).
    planted, chance = successor_hits(synthetic.planted_model(cfg), users, items, sessions)
    assert planted < 0.15 and chance < 0.1, (planted, chance)


def test_bots_too_slow_for_the_threshold_are_refused(spark, tmp_path):
    cfg = tiny_config(tmp_path / "x", "synthetic.bot_events_each=100")
    with pytest.raises(ValueError, match="bot_events_each"):
        synthetic.write_events(spark, cfg)
