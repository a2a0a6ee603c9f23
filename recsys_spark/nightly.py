"""One run, one manifest, resumable; one run at a time per warehouse.

The run manifest (``<warehouse>/runs/run_date=D/manifest.json``) records,
for every stage of that date's run: its status, start and end, its log, the
job's report (row counts) and what it read and wrote, as fingerprints
(each file's path, size and modification time under the stage's input and
output paths, hashed). A rerun of the same date skips a stage that succeeded,
whose inputs and outputs still have the recorded fingerprints, and whose
arguments and config are the same: a failed or missing stage runs again,
and a stage whose input a rerun rewrote runs again after it. ``--from STAGE``
reruns from that stage on, ``--force`` reruns everything.

The lock (``<warehouse>/_run.lock``) keeps two runs off one warehouse. It is
created with ``O_CREAT | O_EXCL`` (atomic on a local or NFS-like file system)
and records the holder's host, pid and start. A lock whose process is gone
(same host, pid not alive) is reported and replaced, never waited on; a live
one refuses the new run (exit 4). On an object store, where a file cannot be
created atomically, let the scheduler keep runs apart (docs/operations.md).

File I/O here goes through ``pyarrow.fs`` rather than Spark's Hadoop
FileSystem: the lock and the manifest are needed before the first stage has
started Spark, and after a stage that crashed it.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

import argparse
import sys

import pyarrow.fs as pafs

from recsys_spark import io
from recsys_spark.config import Config, ConfigError, add_config_args, config_from_args, run_date
from recsys_spark.pipeline import Stage

def _fs(path: str) -> tuple[pafs.FileSystem, str]:
    return pafs.FileSystem.from_uri(path if "://" in path else os.path.abspath(path))


def fingerprint(path: str) -> str:
    """A hash of every file under ``path`` (name, size, modification time); ``missing`` when absent.

    Tables are written to a staging directory and renamed into place, so a
    rewritten table has new files and a new fingerprint even with the same rows.
    """
    fs, root = _fs(path)
    info = fs.get_file_info(root)
    if info.type == pafs.FileType.NotFound:
        return "missing"
    infos = [info] if info.type == pafs.FileType.File else fs.get_file_info(pafs.FileSelector(root, recursive=True))
    digest = hashlib.sha256()
    for f in sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path):
        digest.update(f"{os.path.relpath(f.path, root)}\0{f.size}\0{f.mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def fingerprints(paths: list[str]) -> dict[str, str]:
    return {p: fingerprint(p) for p in paths}


def stage_paths(job: str, args: tuple[str, ...], cfg: Config, run_date: str,
                models: tuple[str, ...] = ()) -> tuple[list[str], list[str]]:
    """(inputs, outputs) of a stage: the paths its job reads and writes, from the config.

    ``models``: the models a training stage writes (the plan's ``Stage.models``;
    ``train_als`` names none in its arguments). Without them they are read from
    ``--models`` / ``--model``.
    """
    wh = cfg.warehouse
    t = lambda name: io.table_path(wh, name)  # noqa: E731 - a table's path, read like a name
    index = [t("user_index"), t("item_index")]
    model_names = list(models)
    if not model_names and "--models" in args:
        model_names = args[args.index("--models") + 1].split(",")
    if not model_names and "--model" in args:
        model_names = [args[args.index("--model") + 1]]
    trained = [io.model_dir(wh, m) for m in model_names] + [f"{io.eval_recs_root(wh)}/{m}" for m in model_names]
    if job == "generate_events":
        return [], [cfg.dataset.source.path]
    if job == "clean_events":
        return [cfg.dataset.source.path], [t("events_clean"), t("quarantine"), t("quarantined_files")]
    if job == "build_tables":
        items_file = [cfg.dataset.items.path] if cfg.dataset.items.path else []
        return [t("events_clean"), *items_file], [*index, t("users"), t("items"), t("interactions")]
    if job == "split":
        return [t("interactions")], [t("split")]
    if job in ("train_baselines", "train_ease", "train_als", "train_neural"):
        return [t("split"), *index, t("items")], trained
    if job == "evaluate":
        return [t("split"), io.eval_recs_root(wh), io.models_root(wh)], [io.metrics_dir(wh, run_date)]
    if job == "recommend":
        return ([io.models_root(wh), t("interactions"), t("split"), *index, t("items")],
                [io.recommendations_run_path(wh, run_date)])
    return [], []


# --------------------------------------------------------------------------- the lock


class LockHeld(RuntimeError):
    """Another run holds the warehouse's lock."""


@dataclass
class Lock:
    """The warehouse's run lock (see the module docstring); a context manager."""

    path: str
    run_date: str
    replaced: dict | None = None  # the stale lock this run took over, when there was one

    @classmethod
    def for_warehouse(cls, warehouse: str, run_date: str) -> "Lock":
        return cls(io.run_lock_path(warehouse), run_date)

    def holder(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "run_date": self.run_date,
                "started_at": dt.datetime.now(dt.timezone.utc).isoformat()}

    def acquire(self) -> "Lock":
        if not io.is_local_path(self.path):
            return self._acquire_remote()
        path = io.strip_file_scheme(self.path)
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                held = self._read(path)
                if not _stale(held):
                    raise LockHeld(_describe_holder(held, path)) from None
                self.replaced = held
                os.remove(path)  # a dead run's lock: reported by the caller, replaced here
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(self.holder(), f)
            return self
        raise LockHeld(f"could not take {path}: another run replaced it at the same moment")

    def _acquire_remote(self) -> "Lock":
        fs, path = _fs(self.path)
        if fs.get_file_info(path).type != pafs.FileType.NotFound:
            with fs.open_input_stream(path) as f:
                raise LockHeld(_describe_holder(json.loads(f.read() or b"{}"), self.path))
        with fs.open_output_stream(path) as f:
            f.write(json.dumps(self.holder()).encode())
        return self

    def release(self) -> None:
        fs, path = _fs(self.path)
        try:
            fs.delete_file(path)
        except (FileNotFoundError, OSError):
            pass

    @staticmethod
    def _read(path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except (OSError, ValueError):
            return {}  # written half-way by a process that died: stale by construction

    def __enter__(self) -> "Lock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _stale(held: dict) -> bool:
    """A lock whose holder is gone: unreadable, or on this host with a pid no longer alive."""
    if not held.get("pid") or not held.get("host"):
        return True
    if held["host"] != socket.gethostname():
        return False  # another machine's process: only its operator can tell
    try:
        os.kill(int(held["pid"]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _describe_holder(held: dict, path: str) -> str:
    return (f"another run holds the warehouse lock {path} (host {held.get('host')}, pid {held.get('pid')}, "
            f"run date {held.get('run_date')}, since {held.get('started_at')}); if that run is gone, delete the file")


# --------------------------------------------------------------------------- the manifest


@dataclass
class RunManifest:
    """``runs/run_date=D/manifest.json``: every stage's last result for that date."""

    path: str
    run_date: str
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    runs: list[dict[str, Any]] = field(default_factory=list)  # one entry per attempt: start, end, outcome

    @classmethod
    def load(cls, warehouse: str, run_date: str) -> "RunManifest":
        path = io.run_manifest_path(warehouse, run_date)
        fs, p = _fs(path)
        if fs.get_file_info(p).type == pafs.FileType.NotFound:
            return cls(path, run_date)
        with fs.open_input_stream(p) as f:
            data = json.loads(f.read())
        return cls(path, run_date, data.get("stages", {}), data.get("runs", []))

    def save(self) -> None:
        fs, p = _fs(self.path)
        fs.create_dir(os.path.dirname(p), recursive=True)
        tmp = f"{p}.tmp"
        with fs.open_output_stream(tmp) as f:
            f.write(json.dumps({"run_date": self.run_date, "runs": self.runs, "stages": self.stages},
                               indent=2, sort_keys=True, default=str).encode())
        fs.move(tmp, p)

    def unchanged(self, stage: str, *, argv: list[str], config: str, inputs: dict[str, str]) -> bool:
        """Whether ``stage`` succeeded with these arguments, config and inputs, and its outputs are as it left them."""
        last = self.stages.get(stage)
        if not last or last.get("status") != "ok":
            return False
        if last.get("argv") != argv or last.get("config_hash") != config or last.get("inputs") != inputs:
            return False
        outputs = last.get("outputs") or {}
        # A stage that left an output missing is not done, whatever it reported.
        return all(fp != "missing" and fingerprint(p) == fp for p, fp in outputs.items())

    def record(self, stage: str, entry: dict[str, Any]) -> None:
        self.stages[stage] = entry
        self.save()


# --------------------------------------------------------------------------- resuming a run


@dataclass
class Resume:
    """What makes a run resumable: the date's manifest and how to fingerprint a stage's inputs
    (what :func:`recsys_spark.pipeline.run` asks of it).

    Attributes:
        manifest: the run date's :class:`RunManifest`.
        config: the resolved config's hash (a changed config reruns every stage).
        paths: a stage -> (input paths, output paths).
        from_stage: rerun from this stage (its first word) on; the ones before it are skipped.
        force: rerun every stage.
    """

    manifest: RunManifest
    config: str
    paths: Any
    from_stage: str | None = None
    force: bool = False

    def inputs(self, stage: Stage) -> dict[str, str]:
        return fingerprints(self.paths(stage)[0])

    def succeeded_before(self, stage: Stage) -> bool:
        return (self.manifest.stages.get(stage.name) or {}).get("status") == "ok"

    def skip_reason(self, stage: Stage, argv: list[str], inputs: dict[str, str], *, before_from: bool) -> str | None:
        """Why ``stage`` need not run, or None when it must."""
        if before_from:
            return f"before --from {self.from_stage}"
        if self.force or self.from_stage is not None:
            return None  # --force, and --from for this stage and the ones after it: always run
        if self.manifest.unchanged(stage.name, argv=argv, config=self.config, inputs=inputs):
            last = self.manifest.stages[stage.name]
            return f"done at {last.get('ended_at_utc', '?')}, inputs unchanged"
        return None

    def record(self, stage: Stage, result: dict[str, Any], *, argv: list[str], inputs: dict[str, str],
               report: dict | None) -> None:
        """A stage's result, with what it read and (when it succeeded) wrote, into the manifest."""
        outputs = fingerprints(self.paths(stage)[1]) if result.get("status") == "ok" else {}
        self.manifest.record(stage.name, {**result, "argv": argv, "config_hash": self.config, "inputs": inputs,
                                          "outputs": outputs, "report": report})

    def finish_run(self, **attempt: Any) -> None:
        """One attempt of the date (start, end, outcome, exit code, mode, status file), appended to ``runs``."""
        self.manifest.runs.append({"started_at_utc": attempt.pop("started"), "ended_at_utc": attempt.pop("ended"),
                                   "exit_code": attempt.pop("code"), "from": self.from_stage,
                                   "force": self.force, **attempt})
        self.manifest.save()


# --------------------------------------------------------------------------- a run's set-up


def prepare(job_args: list[str], *, from_stage: str | None, force: bool):
    """(job_args with the run date pinned, the run's Resume and Lock), or (job_args, None, None)
    when the config does not load (the first stage then fails naming the key, as a job would)
    or the warehouse's file system cannot hold a manifest."""
    parser = argparse.ArgumentParser(add_help=False)
    add_config_args(parser)
    try:
        cfg = config_from_args(parser.parse_known_args(job_args)[0])
    except (ConfigError, SystemExit):
        return job_args, None, None
    day = run_date(cfg)
    if cfg.run_date is None:  # one date for the whole run, even one that crosses midnight
        job_args = [*job_args, "--set", f"run_date={day}"]
        cfg = config_from_args(parser.parse_known_args(job_args)[0])
    try:
        manifest = RunManifest.load(cfg.warehouse, day)
    except (OSError, ValueError) as exc:  # e.g. a scheme pyarrow cannot open: run without resuming
        print(f"pipeline: no run manifest for {cfg.warehouse} ({exc}); every stage runs", file=sys.stderr)
        return job_args, None, None
    resume = Resume(
        manifest=manifest, config=cfg.fingerprint(),
        paths=lambda stage: stage_paths(stage.job, stage.args, cfg, day, stage.models),
        from_stage=from_stage, force=force)
    return job_args, resume, Lock.for_warehouse(cfg.warehouse, day)


__all__ = ["Lock", "LockHeld", "Resume", "RunManifest", "fingerprint", "fingerprints", "prepare", "stage_paths"]
