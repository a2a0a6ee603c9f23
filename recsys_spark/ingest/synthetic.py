"""Deterministic synthetic event logs with planted structure and planted dirt.

The generator runs as a Spark job: ``spark.range`` over *blocks* (contiguous
ranges of users holding about ``EVENTS_PER_BLOCK`` events each, plus one block
per bot), ``mapInPandas`` generating each block with NumPy seeded from
``(seed, block id)``. No event ever sits in driver memory, and the output is a
function of the config alone: the same config gives the same lines in the same
files whatever the scheduling, and changing only ``synthetic.partitions``
regroups the same lines into different files.

What is planted (docs/cleaning.md has the full model):

* heavy tails: item popularity is Zipf (``popularity_exponent``) over a random
  ranking; user activity is Pareto (``activity_exponent``), capped so that a
  user's sessions fit in the time span;
* taste: every item belongs to one of ``num_clusters`` clusters; every user has
  a Dirichlet taste over 1-3 clusters; with probability ``taste_strength`` an
  event's item is drawn from the user's clusters by within-cluster popularity,
  else from global popularity; ratings are higher inside the user's clusters;
* drift: half the items exist from the start, the others launch during the
  span and get a novelty boost that decays, so later periods favour newer items;
* sessions: a user's events come in sessions (ids ``<user>-s<k>``), events
  1 s to a few minutes apart, sessions of a user never overlap;
* sequences: every item has ``SUCCESSORS_PER_ITEM`` planted successors (most
  in its own cluster); with probability ``sequential_share`` an event after a
  session's first takes a successor of the previous event's item (a sparse
  first-order chain), else the taste/popularity draw above;
* dirt: ``dirty_share`` of the rows are made dirty, in equal parts per kind
  (:data:`DIRTY_KINDS`), plus ``bot_users`` bots with ``bot_events_each``
  events each inside 90 seconds. Bots and dirt never touch the same rows.

The driver computes the plan (who has how many events, which block gets how
many dirty rows of each kind) without generating anything, so the ground-truth
manifest (:func:`expected_manifest`) is exact and costs nothing.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from recsys_spark import io
from recsys_spark.schemas import (
    EVENT_TYPES,
    REASON_BOT,
    REASON_FUTURE,
    REASON_INVALID_TS,
    REASON_INVALID_VALUE,
    REASON_MALFORMED,
    REASON_MISSING_ITEM,
    REASON_MISSING_USER,
    REASON_TOO_OLD,
    REASON_UNKNOWN_TYPE,
)
from recsys_spark.config import Config, ConfigError, SyntheticConf

# Raw source column names; conf/datasets/synthetic.yaml maps them.
RAW_COLUMNS = ("eid", "uid", "iid", "type", "ts", "val", "sid")
MANIFEST_NAME = "_manifest.json"  # leading underscore: Spark's readers skip it

EVENTS_PER_BLOCK = 50_000  # one mapInPandas unit: ~10 MB of lines, seconds of NumPy
MIN_BLOCKS = 4  # even tiny configs run several blocks, so block seeding is exercised
# A funnel: most events are views, each later step rarer; ratings on the side.
EVENT_TYPE_PROBS = (0.62, 0.20, 0.08, 0.03, 0.07)
# Rating value (1..5) distributions inside and outside the user's taste clusters.
RATING_PROBS_IN_TASTE = (0.02, 0.05, 0.18, 0.40, 0.35)
RATING_PROBS_OUT_OF_TASTE = (0.15, 0.25, 0.30, 0.20, 0.10)
MAX_TASTE_CLUSTERS = 3
MEAN_SESSION_EVENTS = 5.0
# Gaps between events in a session: at least 1 s (so a legitimate user never
# exceeds 60 events in any minute: bots are told apart by rate alone), mean ~41 s.
MIN_GAP_MS = 1_000
MEAN_EXTRA_GAP_MS = 40_000
SESSION_BREAK_MS = 5 * 60_000  # minimum idle time between two sessions of a user
MAX_EVENTS_PER_USER_DAY = 200  # activity cap: a user's sessions must fit in the span
MAX_PERIODS = 30  # popularity is piecewise constant over at most this many periods
LAUNCHED_AT_START_SHARE = 0.5  # the other items launch during the span
NOVELTY_BOOST = 4.0  # a new item's popularity multiplier at launch ...
NOVELTY_DECAY_SHARE = 1 / 8  # ... decaying with time constant span * this
BOT_WINDOW_MS = 90_000  # every bot's events fall inside 90 seconds
# The planted chain: each item's few likely next items, with these probabilities
# (their order is random), mostly inside the item's own cluster, chosen by
# popularity ** SUCCESSOR_POPULARITY_POWER (damped, so that the chain does not
# only repeat global popularity, which a popularity baseline already knows).
SUCCESSORS_PER_ITEM = 3
SUCCESSOR_PROBS = (0.6, 0.3, 0.1)
SUCCESSOR_IN_CLUSTER_SHARE = 0.9
SUCCESSOR_POPULARITY_POWER = 0.5

# Each dirty kind and the quarantine reason the cleaner must give it
# (None: not quarantined; a re-sent line is counted as a duplicate).
DIRTY_KINDS: dict[str, str | None] = {
    "malformed_json": REASON_MALFORMED,  # line cut in half
    "missing_user_key": REASON_MISSING_USER,  # no "uid" key at all
    "empty_user_id": REASON_MISSING_USER,  # "uid": ""
    "null_item_id": REASON_MISSING_ITEM,  # "iid": null
    "unknown_event_type": REASON_UNKNOWN_TYPE,  # "type": "hover"
    "unparseable_timestamp": REASON_INVALID_TS,
    "future_timestamp": REASON_FUTURE,  # year 2100
    "ancient_timestamp": REASON_TOO_OLD,  # year 1970
    "bad_value_type": REASON_INVALID_VALUE,  # a rating with "val": "five"
    "duplicate": None,  # the same line (same eid) sent twice
}
_CORRUPTING_KINDS = [k for k in DIRTY_KINDS if k != "duplicate"]
_BAD_TIMESTAMPS = ("not-a-timestamp", "2026-02-30T25:61:00Z", "13/01/2026 10:00:00", "")

# Seed streams: every random draw comes from default_rng([seed, stream, ...]).
# The chain has streams of its own (_S_SUCCESSORS for the table, _S_SEQUENCE per
# block), so that sequential_share=0 writes exactly the log of a generator without it.
_S_ITEMS, _S_USERS, _S_TASTE, _S_DIRT_PLAN, _S_SUCCESSORS = 1, 2, 3, 4, 5
_S_BLOCK, _S_BOT, _S_SEQUENCE = 100, 200, 300


# --------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class PlantedModel:
    """Everything the generator decides before drawing events (driver-computable).

    Attributes:
        item_cluster: cluster of each item (item ``i`` has id ``i<i>``).
        item_popularity: base (Zipf) popularity weight of each item.
        item_launch_period: period from which the item exists; -1 for items
            present from the start.
        user_events: number of (clean, pre-corruption) events of each user
            (user ``u`` has id ``u<u>``).
        user_clusters: ``(num_users, 3)`` taste clusters per user.
        user_cluster_weights: ``(num_users, 3)`` Dirichlet weights (0 for unused slots).
        item_successors: ``(num_items, SUCCESSORS_PER_ITEM)`` planted next items of
            each item; column ``k`` is taken with probability ``SUCCESSOR_PROBS[k]``.
        block_bounds: user range of each user block: ``[bounds[b], bounds[b+1])``.
        block_dirty: ``(num_user_blocks, len(DIRTY_KINDS))`` dirty rows per block and kind.
        num_clusters: number of taste clusters.
        num_periods: popularity periods over the span.
        span_ms: length of the span in milliseconds.
        start_ms: epoch milliseconds of ``start_date`` 00:00 UTC.
    """

    item_cluster: np.ndarray
    item_popularity: np.ndarray
    item_launch_period: np.ndarray
    user_events: np.ndarray
    user_clusters: np.ndarray
    user_cluster_weights: np.ndarray
    item_successors: np.ndarray
    block_bounds: np.ndarray
    block_dirty: np.ndarray
    num_clusters: int
    num_periods: int
    span_ms: int
    start_ms: int

    @property
    def num_user_blocks(self) -> int:
        return len(self.block_bounds) - 1

    def period_weights(self, period: int) -> np.ndarray:
        """Item sampling weights during ``period``: popularity x launched x novelty."""
        launch = self.item_launch_period
        period_days = self.span_ms / 86_400_000 / self.num_periods
        decay_days = max(self.span_ms / 86_400_000 * NOVELTY_DECAY_SHARE, 1.0)
        age_days = (period - launch) * period_days
        novelty = np.where(launch >= 0, 1.0 + NOVELTY_BOOST * np.exp(-np.maximum(age_days, 0) / decay_days), 1.0)
        return np.where(launch <= period, self.item_popularity * novelty, 0.0)


def _conf_key(conf: SyntheticConf) -> str:
    return json.dumps(dataclasses.asdict(conf), sort_keys=True)


def planted_model(conf: SyntheticConf) -> PlantedModel:
    """The plan for ``conf`` (deterministic in ``conf.seed``; cached per process)."""
    return _planted_model(_conf_key(conf))


@functools.lru_cache(maxsize=4)
def _planted_model(key: str) -> PlantedModel:
    conf = SyntheticConf(**json.loads(key))
    _check_conf(conf)
    seed = conf.seed
    n_items, n_users, n_clusters = conf.num_items, conf.num_users, conf.num_clusters
    num_periods = min(conf.days, MAX_PERIODS)

    rng = np.random.default_rng([seed, _S_ITEMS])
    # Round-robin over a permutation: every cluster gets items even when tiny.
    item_cluster = rng.permutation(np.arange(n_items) % n_clusters).astype(np.int32)
    ranks = rng.permutation(n_items)
    item_popularity = (ranks + 1.0) ** (-conf.popularity_exponent)
    launched_later = rng.random(n_items) >= LAUNCHED_AT_START_SHARE
    item_launch_period = np.where(launched_later, rng.integers(0, num_periods, n_items), -1)

    rng = np.random.default_rng([seed, _S_USERS])
    activity = rng.pareto(conf.activity_exponent, n_users) + 1.0
    user_events = _allocate(conf.num_events, activity, cap=MAX_EVENTS_PER_USER_DAY * conf.days)

    rng = np.random.default_rng([seed, _S_TASTE])
    k = rng.integers(1, MAX_TASTE_CLUSTERS + 1, n_users)
    user_clusters = rng.integers(0, n_clusters, (n_users, MAX_TASTE_CLUSTERS)).astype(np.int32)
    weights = rng.gamma(1.0, 1.0, (n_users, MAX_TASTE_CLUSTERS)) * (np.arange(MAX_TASTE_CLUSTERS) < k[:, None])
    user_cluster_weights = weights / weights.sum(axis=1, keepdims=True)

    item_successors = _plant_successors(np.random.default_rng([seed, _S_SUCCESSORS]), item_cluster, item_popularity)

    # Blocks: contiguous user ranges with about equal event counts.
    n_blocks = max(min(MIN_BLOCKS, n_users), math.ceil(conf.num_events / EVENTS_PER_BLOCK))
    cum = np.cumsum(user_events)
    cuts = np.searchsorted(cum, np.arange(1, n_blocks) * conf.num_events / n_blocks, side="right")
    block_bounds = np.unique(np.concatenate([[0], cuts, [n_users]]))

    # Dirty rows: equal totals per kind, spread over blocks by their event counts.
    block_events = np.add.reduceat(user_events, block_bounds[:-1]) if n_users else np.zeros(0, np.int64)
    per_kind = int(round(conf.dirty_share * conf.num_events / len(DIRTY_KINDS)))
    block_dirty = np.stack([_allocate(per_kind, block_events.astype(float)) for _ in DIRTY_KINDS], axis=1)
    if np.any(block_dirty.sum(axis=1) > block_events):
        raise ValueError("synthetic.dirty_share too high for the block sizes: lower it")

    start = dt.datetime.fromisoformat(conf.start_date).replace(tzinfo=dt.timezone.utc)
    return PlantedModel(
        item_cluster=item_cluster,
        item_popularity=item_popularity,
        item_launch_period=item_launch_period,
        user_events=user_events,
        user_clusters=user_clusters,
        user_cluster_weights=user_cluster_weights,
        item_successors=item_successors,
        block_bounds=block_bounds,
        block_dirty=block_dirty.astype(np.int64),
        num_clusters=n_clusters,
        num_periods=num_periods,
        span_ms=conf.days * 86_400_000,
        start_ms=int(start.timestamp() * 1000),
    )


def _plant_successors(rng: np.random.Generator, item_cluster: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """``(num_items, SUCCESSORS_PER_ITEM)`` next items per item, vectorised over items.

    Each slot is, with probability ``SUCCESSOR_IN_CLUSTER_SHARE``, drawn from the
    item's own cluster, else from all items, by ``popularity **
    SUCCESSOR_POPULARITY_POWER`` (one ``searchsorted`` over items sorted by
    cluster, as in :func:`_draw_items`). An item is never its own successor
    (it moves to the next item in its range), and a repeat within a row is
    redrawn a few times; a repeat left after that (likely only in clusters of
    a handful of items) just merges two slots' probabilities.
    """
    n_items, k = len(item_cluster), SUCCESSORS_PER_ITEM
    item_order = np.argsort(item_cluster, kind="stable")
    starts = np.searchsorted(item_cluster[item_order], np.arange(item_cluster.max() + 2))
    cum0 = np.concatenate([[0.0], np.cumsum(popularity[item_order] ** SUCCESSOR_POPULARITY_POWER)])
    source = np.repeat(np.arange(n_items), k)
    c = item_cluster[source]
    lo, hi = starts[c], starts[c + 1]
    local = (rng.random(len(source)) < SUCCESSOR_IN_CLUSTER_SHARE) & (hi - lo > 1)
    lo, hi = np.where(local, lo, 0), np.where(local, hi, n_items)

    def draw(rows: np.ndarray) -> np.ndarray:
        a, b = cum0[lo[rows]], cum0[hi[rows]]
        pos = np.searchsorted(cum0, a + rng.random(len(rows)) * (b - a), side="right") - 1
        pos = np.clip(pos, lo[rows], hi[rows] - 1)
        succ = item_order[pos]
        # Not the item itself: the next one in its range instead (cyclically).
        own = succ == source[rows]
        nxt = np.where(pos + 1 < hi[rows], pos + 1, lo[rows])
        return np.where(own & (hi[rows] - lo[rows] > 1), item_order[nxt], succ)

    flat = draw(np.arange(len(source)))
    for _ in range(4):
        table = flat.reshape(n_items, k)
        repeat = np.zeros_like(table, dtype=bool)
        for j in range(1, k):
            repeat[:, j] = (table[:, :j] == table[:, j : j + 1]).any(axis=1)
        rows = np.flatnonzero(repeat.ravel())
        if len(rows) == 0:
            break
        flat[rows] = draw(rows)
    return flat.reshape(n_items, k)


def _check_conf(conf: SyntheticConf) -> None:
    for name in ("num_users", "num_items", "num_events", "days", "num_clusters", "partitions"):
        if getattr(conf, name) < 1:
            raise ValueError(f"synthetic.{name} must be at least 1, got {getattr(conf, name)}")
    if conf.num_events > conf.num_users * MAX_EVENTS_PER_USER_DAY * conf.days:
        raise ValueError(
            f"synthetic.num_events={conf.num_events} exceeds {MAX_EVENTS_PER_USER_DAY} events per user "
            f"per day: raise synthetic.num_users or synthetic.days"
        )
    for name in ("taste_strength", "sequential_share"):
        if not 0.0 <= getattr(conf, name) <= 1.0:
            raise ValueError(f"synthetic.{name} must be in [0, 1], got {getattr(conf, name)}")
    if conf.activity_exponent <= 0 or conf.popularity_exponent <= 0:
        raise ValueError("synthetic.activity_exponent and popularity_exponent must be positive")


def _allocate(total: int, weights: np.ndarray, cap: float | None = None) -> np.ndarray:
    """Split ``total`` into integers proportional to ``weights`` (each <= ``cap``).

    Water-filling for the cap, then largest remainders (ties by index), so the
    split is exact and deterministic.
    """
    w = np.asarray(weights, dtype=float)
    if total == 0 or len(w) == 0:
        return np.zeros(len(w), dtype=np.int64)
    share = np.zeros(len(w))
    free = np.ones(len(w), dtype=bool)
    left = float(total)
    while True:
        share[free] = left * w[free] / w[free].sum()
        over = free & (share > cap) if cap is not None else np.zeros(len(w), dtype=bool)
        if not over.any():
            break
        share[over] = cap
        free &= ~over
        left = total - share[~free].sum()
    base = np.floor(share).astype(np.int64)
    rest = total - int(base.sum())
    order = np.lexsort((np.arange(len(w)), -(share - base)))
    base[order[:rest]] += 1
    return base


def _user_id(u: np.ndarray | int) -> np.ndarray | str:
    return "u" + np.asarray(u).astype(str).astype(object) if not np.isscalar(u) else f"u{u}"


def expected_manifest(conf: SyntheticConf) -> dict:
    """Ground truth for ``conf``: lines written, dirty rows per kind, what the cleaner must find.

    Computed from the plan alone, so it equals what :func:`generate_events` writes.
    """
    model = planted_model(conf)
    dirty = {kind: int(model.block_dirty[:, j].sum()) for j, kind in enumerate(DIRTY_KINDS)}
    corrupted = sum(n for kind, n in dirty.items() if kind != "duplicate")
    bot_rows = conf.bot_users * conf.bot_events_each
    by_reason: dict[str, int] = {}
    for kind, reason in DIRTY_KINDS.items():
        if reason is not None:
            by_reason[reason] = by_reason.get(reason, 0) + dirty[kind]
    if bot_rows:
        by_reason[REASON_BOT] = bot_rows
    return {
        "seed": conf.seed,
        "total_lines": conf.num_events + dirty["duplicate"] + bot_rows,
        "events": conf.num_events,  # before corruption, without re-sends and bots
        "dirty": dirty,
        "bot_users": [_user_id(conf.num_users + k) for k in range(conf.bot_users)],
        "bot_events": bot_rows,
        "expected": {
            "clean_rows": conf.num_events - corrupted,
            "duplicates": dirty["duplicate"],
            "quarantined_by_reason": by_reason,
        },
        "blocks": model.num_user_blocks + conf.bot_users,
        "config": dataclasses.asdict(conf),
    }


# --------------------------------------------------------------------------- one block


_OUT_SCHEMA = "date string, value string, ord long"


def _generate_partition(batches: Iterator[pd.DataFrame], *, key: str) -> Iterator[pd.DataFrame]:
    """mapInPandas body: each input row is a block id; yields that block's lines."""
    conf = SyntheticConf(**json.loads(key))
    for batch in batches:
        for block in batch["id"].tolist():
            yield generate_block(conf, int(block))


def generate_block(conf: SyntheticConf, block: int) -> pd.DataFrame:
    """All lines of one block: columns ``date`` (YYYY-MM-DD), ``value`` (a JSON line), ``ord``.

    ``ord`` orders lines within a date: ``block << 32 | position`` (time order
    inside a block, a re-sent line right after its original).
    """
    model = planted_model(conf)
    if block < model.num_user_blocks:
        return _user_block(conf, model, block)
    return _bot_block(conf, model, block - model.num_user_blocks, block)


def _segment_starts(sizes: np.ndarray) -> np.ndarray:
    return np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)


def _user_block(conf: SyntheticConf, model: PlantedModel, block: int) -> pd.DataFrame:
    rng = np.random.default_rng([conf.seed, _S_BLOCK, block])
    lo, hi = int(model.block_bounds[block]), int(model.block_bounds[block + 1])
    all_counts = model.user_events[lo:hi]
    users = np.arange(lo, hi)[all_counts > 0]
    counts = all_counts[all_counts > 0]
    n = int(counts.sum())
    if n == 0:
        return pd.DataFrame({"date": [], "value": [], "ord": np.zeros(0, np.int64)})
    user = np.repeat(users, counts)
    user_first = _segment_starts(counts)  # index of each user's first event
    pos_in_user = np.arange(n) - np.repeat(user_first, counts)

    # Sessions: a new one at each user's first event and with prob 1/mean after.
    new_session = (pos_in_user == 0) | (rng.random(n) < 1.0 / MEAN_SESSION_EVENTS)
    session = np.cumsum(new_session) - 1  # block-wide session index
    session_size = np.bincount(session)
    session_no = session - np.repeat(session[user_first], counts)  # 0, 1, ... per user
    per_user_sessions = np.add.reduceat(new_session.astype(np.int64), user_first)

    gap = MIN_GAP_MS + rng.exponential(MEAN_EXTRA_GAP_MS, n).astype(np.int64)
    gap[new_session] = 0
    cum_gap = np.cumsum(gap)
    offset_in_session = cum_gap - np.repeat(cum_gap[new_session], session_size)
    busy = np.add.reduceat(gap, np.flatnonzero(new_session)) + SESSION_BREAK_MS

    # Lay each user's sessions out in order with random idle time between them
    # (normalised exponential spacings: the gaps of sorted uniform starts), so
    # they spread over the span and never overlap.
    user_of_session = np.repeat(np.arange(len(counts)), per_user_sessions)
    session_first = _segment_starts(per_user_sessions)
    idle = np.maximum(model.span_ms - np.add.reduceat(busy, session_first), 0).astype(float)
    spacing = rng.exponential(1.0, len(busy))
    tail = rng.exponential(1.0, len(counts))  # idle time after each user's last session
    cum_sp = np.cumsum(spacing)
    sp_upto = cum_sp - np.repeat(cum_sp[session_first] - spacing[session_first], per_user_sessions)
    sp_total = np.add.reduceat(spacing, session_first) + tail
    busy_cum = np.cumsum(busy) - busy
    busy_before = busy_cum - np.repeat(busy_cum[session_first], per_user_sessions)
    session_start = (sp_upto / sp_total[user_of_session] * idle[user_of_session]).astype(np.int64) + busy_before
    t = session_start[session] + offset_in_session  # ms since the start of the span

    # Items: taste cluster or global popularity, by the period's weights.
    period = np.minimum(t * model.num_periods // model.span_ms, model.num_periods - 1)
    taste = rng.random(n) < conf.taste_strength
    slot_u = rng.random(n)
    w = model.user_cluster_weights[user]
    slot = np.minimum((slot_u[:, None] > np.cumsum(w, axis=1)).sum(axis=1), MAX_TASTE_CLUSTERS - 1)
    cluster = model.user_clusters[user, slot]
    item = _draw_items(model, period, np.where(taste, cluster, -1), rng.random(n))
    if conf.sequential_share > 0:
        pos_in_session = np.arange(n) - np.repeat(np.flatnonzero(new_session), session_size)
        seq_rng = np.random.default_rng([conf.seed, _S_SEQUENCE, block])
        item = _follow_successors(model, item, period, pos_in_session, conf.sequential_share, seq_rng)

    etype = rng.choice(len(EVENT_TYPES), n, p=EVENT_TYPE_PROBS)
    in_taste = ((model.user_clusters[user] == model.item_cluster[item][:, None]) & (w > 0)).any(axis=1)
    rating = np.where(
        in_taste,
        rng.choice(5, n, p=RATING_PROBS_IN_TASTE),
        rng.choice(5, n, p=RATING_PROBS_OUT_OF_TASTE),
    ) + 1

    # Time order inside the block; event ids follow it.
    order = np.lexsort((user, t))
    user, item, etype, rating, t = user[order], item[order], etype[order], rating[order], t[order]
    sess_label = _user_id(user) + "-s" + session_no[order].astype(str).astype(object)
    eid = f"e{block}-" + np.arange(n).astype(str).astype(object)
    ts = _iso(model.start_ms + t)
    rows = {
        "eid": eid,
        "uid": _user_id(user),
        "iid": "i" + item.astype(str).astype(object),
        "type": np.asarray(EVENT_TYPES, dtype=object)[etype],
        "ts": ts,
        "val": rating,
        "sid": sess_label,
    }
    is_rating = etype == EVENT_TYPES.index("rating")
    lines = _render(rows, is_rating)
    date = np.asarray([s[:10] for s in ts], dtype=object)
    ordv = (np.int64(block) << 32) + 2 * np.arange(n, dtype=np.int64)

    # Dirt: disjoint random rows per corrupting kind; re-sends copy clean rows.
    dirty = model.block_dirty[block]
    picks = rng.choice(n, int(dirty.sum()), replace=False) if dirty.sum() else np.zeros(0, np.int64)
    cut = np.cumsum(dirty)[:-1]
    by_kind = dict(zip(DIRTY_KINDS, np.split(picks, cut)))
    for kind in _CORRUPTING_KINDS:
        for i in by_kind[kind]:
            lines[i] = _corrupt(kind, i, rows, bool(is_rating[i]), lines[i])
    dup = np.sort(by_kind["duplicate"])
    lines = np.concatenate([lines, lines[dup]])
    date = np.concatenate([date, date[dup]])
    ordv = np.concatenate([ordv, ordv[dup] + 1])
    return pd.DataFrame({"date": date, "value": lines, "ord": ordv})


def _follow_successors(
    model: PlantedModel,
    item: np.ndarray,
    period: np.ndarray,
    pos_in_session: np.ndarray,
    share: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """``item`` with each later event of a session, with probability ``share``,
    replaced by a planted successor of the event before it.

    Events are in session order (a session is a contiguous run, in time order).
    A successor follows the *final* item of the previous event, so chains run
    on; hence one vectorised step per position in the session (a few dozen at
    most: sessions are geometric with mean MEAN_SESSION_EVENTS), each over all
    sessions that long. A successor not launched yet in the event's period
    leaves the event's own draw in place.
    """
    item = item.copy()
    n = len(item)
    follows = (rng.random(n) < share) & (pos_in_session > 0)
    slot = np.minimum(np.searchsorted(np.cumsum(SUCCESSOR_PROBS), rng.random(n), side="right"),
                      SUCCESSORS_PER_ITEM - 1)
    idx = np.flatnonzero(follows)
    idx = idx[np.argsort(pos_in_session[idx], kind="stable")]
    bounds = np.searchsorted(pos_in_session[idx], np.arange(1, int(pos_in_session.max(initial=0)) + 2))
    for a, b in zip(bounds[:-1], bounds[1:]):
        at = idx[a:b]
        succ = model.item_successors[item[at - 1], slot[at]]
        live = model.item_launch_period[succ] <= period[at]
        item[at[live]] = succ[live]
    return item


def _draw_items(model: PlantedModel, period: np.ndarray, cluster: np.ndarray, u: np.ndarray) -> np.ndarray:
    """Item per event: within ``cluster`` (>= 0) or globally (-1), by the period's weights.

    One cumulative sum per period over items sorted by cluster: a cluster is a
    contiguous range of it, so both draws are a single ``searchsorted``.
    """
    item_order = np.argsort(model.item_cluster, kind="stable")
    n_clusters = model.num_clusters
    starts = np.searchsorted(model.item_cluster[item_order], np.arange(n_clusters + 1))
    out = np.empty(len(period), dtype=np.int64)
    for p in np.unique(period):
        sel = np.nonzero(period == p)[0]
        cum = np.cumsum(model.period_weights(int(p))[item_order])
        cum0 = np.concatenate([[0.0], cum])
        c = cluster[sel]
        cc = np.maximum(c, 0)
        a, b = cum0[starts[cc]], cum0[starts[cc + 1]]
        # Global draw for non-taste events and for clusters with nothing launched yet.
        local = (c >= 0) & (b > a)
        a = np.where(local, a, 0.0)
        b = np.where(local, b, cum[-1])
        pos = np.searchsorted(cum, a + u[sel] * (b - a), side="right")
        lo_i = np.where(local, starts[cc], 0)
        hi_i = np.where(local, starts[cc + 1], len(cum)) - 1
        out[sel] = item_order[np.clip(pos, lo_i, hi_i)]
    return out


def _iso(epoch_ms: np.ndarray) -> np.ndarray:
    """ISO 8601 UTC with milliseconds and Z, e.g. ``2026-01-05T13:45:12.345Z``."""
    text = np.datetime_as_string(np.asarray(epoch_ms, dtype="datetime64[ms]"), unit="ms")
    return np.char.add(text, "Z").astype(object)


def _render(rows: dict[str, np.ndarray], is_rating: np.ndarray) -> np.ndarray:
    """JSON lines, keys in source order; ``val`` only on ratings (a JSON number)."""
    val = [f'"val":{v},' if r else "" for v, r in zip(rows["val"].tolist(), is_rating.tolist())]
    out = [
        f'{{"eid":"{e}","uid":"{u}","iid":"{i}","type":"{ty}","ts":"{ts}",{v}"sid":"{s}"}}'
        for e, u, i, ty, ts, v, s in zip(rows["eid"], rows["uid"], rows["iid"], rows["type"], rows["ts"], val, rows["sid"])
    ]
    return np.asarray(out, dtype=object)


def _replace_year(ts: str, year: int) -> str:
    # Feb 29 does not exist in 2100 or 1970.
    rest = ts[4:].replace("-02-29T", "-02-28T")
    return f"{year:04d}{rest}"


def _corrupt(kind: str, i: int, rows: dict[str, np.ndarray], is_rating: bool, line: str) -> str:
    """Row ``i`` made dirty in exactly one way (everything else stays valid)."""
    if kind == "malformed_json":
        return line[: len(line) // 2]  # a proper prefix of a JSON object never parses
    rec: dict[str, object] = {"eid": rows["eid"][i], "uid": rows["uid"][i], "iid": rows["iid"][i],
                              "type": rows["type"][i], "ts": rows["ts"][i]}
    if is_rating:
        rec["val"] = int(rows["val"][i])
    rec["sid"] = rows["sid"][i]
    if kind == "missing_user_key":
        del rec["uid"]
    elif kind == "empty_user_id":
        rec["uid"] = ""
    elif kind == "null_item_id":
        rec["iid"] = None
    elif kind == "unknown_event_type":
        rec["type"] = "hover"
    elif kind == "unparseable_timestamp":
        rec["ts"] = _BAD_TIMESTAMPS[i % len(_BAD_TIMESTAMPS)]
    elif kind == "future_timestamp":
        rec["ts"] = _replace_year(str(rec["ts"]), 2100)
    elif kind == "ancient_timestamp":
        rec["ts"] = _replace_year(str(rec["ts"]), 1970)
    elif kind == "bad_value_type":
        rec["type"], rec["val"] = "rating", "five"
    else:  # pragma: no cover - DIRTY_KINDS and this function change together
        raise ValueError(kind)
    return json.dumps(rec, separators=(",", ":"))


def _bot_block(conf: SyntheticConf, model: PlantedModel, bot: int, block: int) -> pd.DataFrame:
    """One bot: ``bot_events_each`` clean-looking views/clicks inside BOT_WINDOW_MS."""
    rng = np.random.default_rng([conf.seed, _S_BOT, bot])
    n = conf.bot_events_each
    start = int(rng.integers(0, max(model.span_ms - BOT_WINDOW_MS, 1)))
    t = start + np.sort(rng.integers(0, BOT_WINDOW_MS, n))
    period = np.minimum(t * model.num_periods // model.span_ms, model.num_periods - 1)
    item = _draw_items(model, period, np.full(n, -1), rng.random(n))
    etype = np.where(rng.random(n) < 0.8, 0, 1)  # views and clicks
    user = _user_id(conf.num_users + bot)
    rows = {
        "eid": f"b{bot}-" + np.arange(n).astype(str).astype(object),
        "uid": np.full(n, user, dtype=object),
        "iid": "i" + item.astype(str).astype(object),
        "type": np.asarray(EVENT_TYPES, dtype=object)[etype],
        "ts": _iso(model.start_ms + t),
        "val": np.zeros(n, dtype=np.int64),
        "sid": np.full(n, f"{user}-s0", dtype=object),
    }
    lines = _render(rows, np.zeros(n, dtype=bool))
    date = np.asarray([s[:10] for s in rows["ts"]], dtype=object)
    ordv = (np.int64(block) << 32) + 2 * np.arange(n, dtype=np.int64)
    return pd.DataFrame({"date": date, "value": lines, "ord": ordv})


# --------------------------------------------------------------------------- Spark


def generate_events(spark: SparkSession, conf: SyntheticConf) -> DataFrame:
    """The raw event log for ``conf`` as a DataFrame ``(date, value, ord)``, one JSON line per row.

    Lazy: blocks are generated on the executors when an action runs.
    """
    model = planted_model(conf)  # validates conf on the driver, before any task
    n_blocks = model.num_user_blocks + conf.bot_users
    blocks = spark.range(0, n_blocks, 1, numPartitions=min(conf.partitions, n_blocks))
    body = functools.partial(_generate_partition, key=_conf_key(conf))
    return blocks.mapInPandas(body, _OUT_SCHEMA)


def output_path(cfg: Config) -> str:
    """``dataset.source.path``, when the dataset describes a log in the generator's format.

    Raises:
        ConfigError: the dataset is another source (MovieLens, a production
            log): writing there would replace its data with a synthetic log.
    """
    src = cfg.dataset.source
    mapped = {column for column in dataclasses.asdict(src.columns).values() if column is not None}
    if not src.path or src.format != "json" or src.timestamp_format != "iso8601" or not mapped <= set(RAW_COLUMNS):
        raise ConfigError(
            f"generate_events writes to dataset.source.path, and dataset '{cfg.dataset.name}' "
            f"({src.path or 'no path'}) is not a log in the generator's format (json, iso8601, columns from "
            f"{', '.join(RAW_COLUMNS)}): use --dataset synthetic, a copy of its file, or --output"
        )
    return src.path


def write_events(spark: SparkSession, cfg: Config, *, output: str | None = None) -> dict:
    """Generate the log for ``cfg.synthetic`` and write it as JSON lines partitioned by date.

    Writes ``<output>/date=YYYY-MM-DD/part-*`` (gzip when ``synthetic.gzip``)
    through a staging directory swapped into place, then ``<output>/_manifest.json``.
    ``output`` defaults to ``dataset.source.path`` (:func:`output_path`), where
    the clean job reads it.

    Returns:
        The manifest (:func:`expected_manifest` plus ``output``).
    """
    conf = cfg.synthetic
    out = output or output_path(cfg)
    threshold = cfg.clean.bot.max_events_per_minute
    if conf.bot_users and conf.bot_events_each * 60_000 // BOT_WINDOW_MS <= threshold:
        raise ConfigError(
            f"synthetic.bot_events_each={conf.bot_events_each} in {BOT_WINDOW_MS // 1000} s is not above "
            f"clean.bot.max_events_per_minute={threshold}: the bots would not be bots"
        )
    manifest = expected_manifest(conf)
    staging = f"{out.rstrip('/')}._staging"
    io.delete_path(spark, staging)
    # A total order (date, ord) inside each task: it is also the order the
    # partitioned writer needs, so Spark adds no sort of its own, and equal
    # configs give byte-identical files.
    lines = generate_events(spark, conf).sortWithinPartitions("date", "ord").select("date", "value")
    writer = lines.write.mode("overwrite").partitionBy("date")
    if conf.gzip:
        writer = writer.option("compression", "gzip")
    writer.text(staging)
    io.publish_directory(spark, staging, out)
    manifest["output"] = out
    io.write_json(spark, f"{out.rstrip('/')}/{MANIFEST_NAME}", manifest)
    return manifest
