"""Bytewax recovery directories for the job: created on first use, checked on every start.

Bytewax resumes each source partition from its snapshot and each stateful step from its
state, both as of the last epoch every worker finished. That only makes sense for the
same dataflow over the same topics, so a ``hcp-recovery.json`` beside the partitions
records what they belong to, and a mismatch stops the job with what to do about it.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from bytewax.recovery import init_db_dir

from flows.settings import JobSettings
from hcp.errors import RecoveryStateError

__all__ = ["RECOVERY_FORMAT", "check_recovery_dir", "describe_mismatch", "prepare_recovery_dir"]

log = logging.getLogger(__name__)

# Bump when the pickled shard or fleet state changes shape, moves, or the flow's stateful
# steps change (2: the layout of issue 10 moved every state class to flows/profitability/
# and flows/router/; 3: the router's state gained GPU health, per-workload avoided GPUs and
# pending reasons, issue 11; 4: site groups between the shards and the fleet step, issue 16;
# 5: shard and router progress in flows/progress.py, issue 18; 6: workloads gained
# confirmed GPUs, the router reservations, issue 21).
RECOVERY_FORMAT = 6
MANIFEST = "hcp-recovery.json"
INITIALISING = ".hcp-initialising"


def _identity(settings: JobSettings, partitions: dict[str, int]) -> dict[str, object]:
    t = settings.topics
    return {
        "format": RECOVERY_FORMAT,
        "flow": "hcp_profitability",
        "topics": {name: partitions.get(name) for name in (t.gpu, t.asic, t.prices)},
        "window_ms": settings.window_ms,
    }


def check_recovery_dir(root: Path) -> None:
    """Fail early, before the job touches Kafka, if ``root`` cannot be a recovery directory.

    Creates it when missing (so a path under a file or in a read-only place fails now) and
    reads its manifest when there is one.
    """
    try:
        if root.exists() and not root.is_dir():
            msg = f"--recovery-dir {root} is a file, not a directory"
            raise RecoveryStateError(msg)
        root.mkdir(parents=True, exist_ok=True)
        if (root / MANIFEST).exists():
            _read_manifest(root / MANIFEST)
    except OSError as exc:
        raise _unusable(root, exc) from None


def prepare_recovery_dir(
    settings: JobSettings, partitions: dict[str, int], recovery_partitions: int
) -> Path:
    """Create the recovery partitions on first use; refuse a directory from another job.

    Every problem with the directory itself (a file in its place, no permission, a
    corrupt manifest) raises :class:`RecoveryStateError` naming the directory.
    """
    assert settings.recovery_dir is not None
    root = settings.recovery_dir
    try:
        return _prepare(settings, partitions, recovery_partitions)
    except OSError as exc:
        raise _unusable(root, exc) from None


def _unusable(root: Path, exc: OSError) -> RecoveryStateError:
    msg = f"--recovery-dir {root} cannot be used: {exc.strerror or exc}"
    if exc.filename and str(exc.filename) != str(root):
        msg += f" ({exc.filename})"
    return RecoveryStateError(msg)


def _prepare(settings: JobSettings, partitions: dict[str, int], recovery_partitions: int) -> Path:
    assert settings.recovery_dir is not None
    root = settings.recovery_dir
    if root.exists() and not root.is_dir():
        msg = f"--recovery-dir {root} is a file, not a directory"
        raise RecoveryStateError(msg)
    manifest = root / MANIFEST
    marker = root / INITIALISING
    want = _identity(settings, partitions)
    if marker.exists():
        # A start died while creating the partitions; nothing has run on them, so redo it.
        log.warning("redoing the interrupted creation of recovery directory %s", root)
        for path in root.iterdir():
            if path.name.startswith(("part-", MANIFEST)):
                path.unlink()
        marker.unlink()
    if manifest.exists():
        have = _read_manifest(manifest)
        if have != want:
            msg = (
                f"recovery directory {root} belongs to another job or version: "
                f"{describe_mismatch(have, want)}; resume with the settings it was made "
                f"with, or start afresh with an empty --recovery-dir"
            )
            raise RecoveryStateError(msg)
        log.info("resuming from recovery directory %s", root)
        _check_worker_count(root, settings.total_workers)
        return root
    if root.exists() and any(root.iterdir()):
        msg = f"{root} is not empty and has no {MANIFEST}; give an empty or new --recovery-dir"
        raise RecoveryStateError(msg)
    root.mkdir(parents=True, exist_ok=True)
    # Crash-safe creation: the marker says "unfinished" until the manifest is in place,
    # and the manifest appears whole (rename) or not at all.
    marker.touch()
    init_db_dir(root, recovery_partitions)
    tmp = root / f"{MANIFEST}.tmp"
    tmp.write_text(json.dumps(want, indent=2, sort_keys=True))
    os.replace(tmp, manifest)
    marker.unlink()
    log.info("created %d recovery partitions in %s", recovery_partitions, root)
    _check_worker_count(root, settings.total_workers)
    return root


def _read_manifest(manifest: Path) -> dict[str, object]:
    try:
        have = json.loads(manifest.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = (
            f"{manifest} is corrupt ({exc}); restore it, or start afresh with an empty "
            f"--recovery-dir"
        )
        raise RecoveryStateError(msg) from None
    if not isinstance(have, dict):
        msg = f"{manifest} is corrupt (not an object); start afresh with an empty --recovery-dir"
        raise RecoveryStateError(msg)
    return have


def describe_mismatch(have: dict[str, object], want: dict[str, object]) -> str:
    """What differs between a directory's manifest and this job, field by field.

    Nested fields (the topics) are named by their path, e.g. ``topics.hcp.telemetry.gpu``.
    """
    diffs: list[str] = []

    def walk(path: str, old: object, new: object) -> None:
        if isinstance(old, dict) and isinstance(new, dict):
            for key in sorted(set(old) | set(new), key=str):
                walk(f"{path}.{key}" if path else str(key), old.get(key), new.get(key))
        elif old != new:
            diffs.append(f"{path} was {_shown(old)}, now {_shown(new)}")

    walk("", have, want)
    return "; ".join(diffs)


def _shown(value: object) -> str:
    return "absent" if value is None else json.dumps(value)


def _check_worker_count(root: Path, workers: int) -> None:
    # Bytewax itself accepts fewer partitions than workers (3 workers over 2 partitions
    # resume correctly here), but its guidance is at least one per worker: warn, not fail.
    parts = len(list(root.glob("part-*.sqlite3")))
    if parts < workers:
        log.warning(
            "%s has %d recovery partitions for %d workers over all processes; make a new "
            "--recovery-dir with --recovery-partitions >= the most workers you will run",
            root, parts, workers,
        )
