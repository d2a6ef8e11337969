"""The storage layer of checkpoint/resume: a checkpoint is never left half-written, and a resumed
run is the same run.

Layout under ``<run_dir>/checkpoints/``::

    latest                  "step_40" - the newest complete checkpoint, updated last (for humans/scripts)
    step_30/COMPLETE        manifest (JSON): step, time, every file with its size; written last inside
    step_40/COMPLETE        the directory, before the directory becomes visible
    step_40/...             whatever the writers put there (driver state, DeepSpeed shards, ...)
    .tmp-step_50-<pid>/     a save in progress, or left by a crash: never a checkpoint, removed at the next save
    .trash-step_20-<pid>/   a checkpoint being deleted (renamed first, so a half-deleted one is never seen)

A save is ``with store.begin(step) as ck: <writers fill ck.path>``. On a clean exit the files are
fsynced, the manifest is written, the directory is renamed to ``step_<N>`` in one ``os.rename``,
``latest`` is replaced atomically, and only then are old checkpoints pruned. On an exception the
temporary directory is removed and the previous checkpoint stays the newest. A process killed at
any point leaves either the previous or the new checkpoint as :meth:`CheckpointStore.latest`.

Also here: atomic writes of small state files, and a SIGTERM/SIGINT flag
so the loop can finish its step, save and exit. torch/numpy are imported inside the functions that
need them, so the store itself loads in milliseconds (also in a subprocess).
"""

from __future__ import annotations

import datetime
import errno
import hashlib
import json
import logging
import os
import re
import shutil
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

log = logging.getLogger("rl_vlm.checkpoint")


FORMAT_VERSION = 1


MANIFEST = "COMPLETE"


POINTER = "latest"


CHECKPOINTS_DIR = "checkpoints"


HASH_MAX_BYTES = 1 << 20
"""Files up to this size get a sha256 in the manifest (driver state, configs); shards only a size."""


_STEP_RE = re.compile(r"^step_(\d+)$")


_TMP_PREFIX = ".tmp-"


_TRASH_PREFIX = ".trash-"


# Temporary directories of saves in progress in this process: never cleaned as stale.
_ACTIVE: set[str] = set()


_ACTIVE_LOCK = threading.Lock()


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, incomplete, or of an unknown format."""


def fsync_dir(path: str) -> None:
    """Make a directory's entries (creations, renames) durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a directory; the rename is all they offer
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


def fsync_tree(path: str) -> None:
    """fsync every file and directory under ``path``. Writers in other processes on the same node
    are covered (fsync acts on the inode); on a network filesystem each writer must close (and
    ideally ``fsync_tree``) its own files before returning, as close flushes there."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(root, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(root)


def _write_atomic(path: str, write: Callable[[Any], None], mode: str) -> None:
    """Write through ``write(file)`` into a sibling temp file, fsync, then ``os.replace``: readers
    see the old file or the new one, never a partial one."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{threading.get_ident()}")
    try:
        with open(tmp, mode, encoding=None if "b" in mode else "utf-8") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


def save_json_atomic(path: str, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` atomically and durably."""
    _write_atomic(path, lambda f: json.dump(obj, f, indent=1, sort_keys=True), "w")


def save_torch_atomic(path: str, obj: Any) -> None:
    """``torch.save`` ``obj`` to ``path`` atomically and durably."""
    import torch

    _write_atomic(path, lambda f: torch.save(obj, f), "wb")


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 16), b""):
            h.update(chunk)
    return h.hexdigest()


def step_of(path: str) -> int:
    """The step of a complete checkpoint directory (from its manifest)."""
    return int(read_manifest(path)["step"])


def read_manifest(path: str) -> dict[str, Any]:
    """The manifest of the checkpoint at ``path``; CheckpointError if there is none or it is unreadable."""
    try:
        with open(os.path.join(path, MANIFEST), encoding="utf-8") as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no {MANIFEST} manifest (the save did not finish)") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path}: unreadable {MANIFEST} manifest ({e})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("step"), int):
        raise CheckpointError(f"{path}: {MANIFEST} is not a checkpoint manifest")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise CheckpointError(f"{path}: checkpoint format {manifest.get('format_version')} is newer than this "
                              f"rl_vlm understands ({FORMAT_VERSION})")
    return manifest


def check_complete(path: str, deep: bool = False) -> dict[str, Any]:
    """Validate the checkpoint at ``path`` and return its manifest: the manifest exists and every
    file it lists has the recorded size (``deep``: and the recorded sha256). CheckpointError otherwise."""
    if not os.path.isdir(path):
        raise CheckpointError(f"{path}: not a directory")
    manifest = read_manifest(path)
    for rel, info in manifest.get("files", {}).items():
        file = os.path.join(path, rel)
        try:
            size = os.path.getsize(file)
        except OSError:
            raise CheckpointError(f"{path}: {rel} is listed in {MANIFEST} but missing") from None
        if size != info["size"]:
            raise CheckpointError(f"{path}: {rel} has {size} bytes, {MANIFEST} says {info['size']}")
        if deep and "sha256" in info and _sha256(file) != info["sha256"]:
            raise CheckpointError(f"{path}: {rel} does not match its sha256 in {MANIFEST}")
    return manifest


def is_complete(path: str, deep: bool = False) -> bool:
    try:
        check_complete(path, deep)
    except CheckpointError:
        return False
    return True


def _build_manifest(path: str, step: int, meta: dict[str, Any]) -> dict[str, Any]:
    files: dict[str, dict[str, Any]] = {}
    for root, dirs, names in os.walk(path):
        dirs.sort()
        for name in sorted(names):
            file = os.path.join(root, name)
            rel = os.path.relpath(file, path)
            if rel == MANIFEST:
                raise CheckpointError(f"{path}: writers must not create {MANIFEST}; the store writes it")
            size = os.path.getsize(file)
            files[rel] = {"size": size, **({"sha256": _sha256(file)} if size <= HASH_MAX_BYTES else {})}
    now = time.time()
    return {"format_version": FORMAT_VERSION, "step": step, "unix_time": now,
            "time": datetime.datetime.fromtimestamp(now, datetime.timezone.utc).isoformat(timespec="seconds"),
            "files": files, "meta": meta}


class PendingCheckpoint:
    """A save in progress: writers fill :attr:`path`; :meth:`commit` publishes it, :meth:`abort`
    discards it. As a context manager it commits on a clean exit and aborts on any exception."""

    def __init__(self, store: CheckpointStore, step: int, path: str, meta: dict[str, Any]) -> None:
        self.store = store
        self.step = step
        self.path = path
        """The temporary directory the writers fill (absolute; every writer must see the same filesystem)."""
        self.meta = meta
        """Free-form JSON-able data recorded in the manifest under ``meta``."""
        self.final_path: str | None = None
        """``<run_dir>/checkpoints/step_<N>`` once committed."""
        self._state = "open"

    def commit(self) -> str:
        if self._state != "open":
            raise RuntimeError(f"checkpoint step {self.step} is already {self._state}")
        try:
            fsync_tree(self.path)
            manifest = _build_manifest(self.path, self.step, self.meta)
            with open(os.path.join(self.path, MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(self.path)
        except BaseException:
            self.abort()
            raise
        try:
            self.final_path = self.store._publish(self)
        except BaseException:
            if os.path.isdir(self.path):  # the rename did not happen
                self.abort()
            raise
        # From here on the new checkpoint is visible and complete; failures below never delete it.
        self._state = "committed"
        _forget(self.path)
        self.store._after_publish(self.final_path)
        return self.final_path

    def abort(self) -> None:
        if self._state != "open":
            return
        self._state = "aborted"
        shutil.rmtree(self.path, ignore_errors=True)
        _forget(self.path)

    def __enter__(self) -> PendingCheckpoint:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.abort()


def _forget(path: str) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(path)


class CheckpointStore:
    """Atomic, bounded checkpoint directories under ``<run_dir>/checkpoints``. One training run
    (one driver) writes a run directory at a time.

    ``keep_last``: how many complete checkpoints survive a save (the one just written included);
    0 keeps them all.
    """

    def __init__(self, run_dir: str, keep_last: int = 2) -> None:
        if keep_last < 0:
            raise ValueError(f"keep_last must be >= 0, got {keep_last}")
        self.run_dir = os.path.abspath(run_dir)
        self.dir = os.path.join(self.run_dir, CHECKPOINTS_DIR)
        self.keep_last = keep_last

    # ---- writing

    def begin(self, step: int, meta: dict[str, Any] | None = None) -> PendingCheckpoint:
        """Start the save of ``step``: cleans what crashed saves left, returns the pending checkpoint."""
        if not isinstance(step, int) or step < 0:
            raise ValueError(f"step must be a non-negative int, got {step!r}")
        os.makedirs(self.dir, exist_ok=True)
        self._clean_stale()
        path = os.path.join(self.dir, f"{_TMP_PREFIX}step_{step}-{os.getpid()}")
        with _ACTIVE_LOCK:
            if path in _ACTIVE:
                raise RuntimeError(f"a save of step {step} is already in progress in this process")
            _ACTIVE.add(path)
        try:
            if os.path.lexists(path):  # a dead process with our pid (containers reuse pids)
                shutil.rmtree(path)
            os.mkdir(path)
        except BaseException:
            _forget(path)
            raise
        return PendingCheckpoint(self, step, path, dict(meta or {}))

    def _publish(self, pending: PendingCheckpoint) -> str:
        final = os.path.join(self.dir, f"step_{pending.step}")
        # Checkpoints at or after this step belong to a timeline this run abandoned by resuming
        # from an earlier checkpoint; left in place, `latest()` would jump back to them.
        for step, path in self._step_dirs():
            if step >= pending.step:
                if step > pending.step and is_complete(path):
                    log.warning("removing %s: the run resumed from an earlier checkpoint and has now saved step %d",
                                path, pending.step)
                self._retire(path)
        os.rename(pending.path, final)
        fsync_dir(self.dir)
        return final

    def _after_publish(self, final: str) -> None:
        _write_atomic(os.path.join(self.dir, POINTER), lambda f: f.write(os.path.basename(final) + "\n"), "w")
        if self.keep_last:
            for path in self.list()[:-self.keep_last]:
                self._retire(path)
        self._empty_trash(own_only=True)

    def _retire(self, path: str) -> None:
        """Rename first, then delete: a half-deleted checkpoint is never named ``step_<N>``."""
        trash = os.path.join(self.dir, f"{_TRASH_PREFIX}{os.path.basename(path)}-{os.getpid()}")
        if os.path.lexists(trash):
            shutil.rmtree(trash, ignore_errors=True)
        os.rename(path, trash)

    def _empty_trash(self, own_only: bool) -> None:
        suffix = f"-{os.getpid()}"
        for name in os.listdir(self.dir):
            if name.startswith(_TRASH_PREFIX) and (not own_only or name.endswith(suffix)):
                shutil.rmtree(os.path.join(self.dir, name), ignore_errors=True)

    def _clean_stale(self) -> None:
        with _ACTIVE_LOCK:
            active = set(_ACTIVE)
        for name in os.listdir(self.dir):
            path = os.path.join(self.dir, name)
            if name.startswith(_TMP_PREFIX) and path not in active:
                log.info("removing %s, left by an interrupted save", path)
                shutil.rmtree(path, ignore_errors=True)
            elif name.startswith(f".{POINTER}.tmp-"):  # a pointer update cut short
                os.unlink(path)
        self._empty_trash(own_only=False)

    # ---- reading

    def _step_dirs(self) -> list[tuple[int, str]]:
        try:
            names = os.listdir(self.dir)
        except FileNotFoundError:
            return []
        found = [(int(m.group(1)), os.path.join(self.dir, name)) for name in names if (m := _STEP_RE.match(name))]
        return sorted(found)

    def list(self) -> list[str]:
        """Complete checkpoints, oldest step first. ``step_*`` directories without a valid manifest
        (not written by this store, or damaged) are skipped with a warning."""
        out = []
        for step, path in self._step_dirs():
            try:
                manifest = check_complete(path)
            except CheckpointError as e:
                log.warning("ignoring %s", e)
                continue
            if manifest["step"] != step:
                log.warning("ignoring %s: its manifest says step %d", path, manifest["step"])
                continue
            out.append(path)
        return out

    def latest(self) -> str | None:
        """The newest complete checkpoint, or None. The manifests decide, not the ``latest`` file: a
        crash between the rename and the pointer update leaves the pointer one save behind, and a
        pointer to a removed directory is ignored."""
        complete = self.list()
        newest = complete[-1] if complete else None
        pointed = self._read_pointer()
        if pointed is not None and pointed != newest:
            log.info("%s names %s but the newest complete checkpoint is %s", os.path.join(self.dir, POINTER),
                     pointed, newest)
        return newest

    def _read_pointer(self) -> str | None:
        try:
            with open(os.path.join(self.dir, POINTER), encoding="utf-8") as f:
                name = f.read().strip()
        except OSError:
            return None
        return os.path.join(self.dir, name) if _STEP_RE.match(name) else None

    def resolve(self, resume: str) -> str | None:
        """The checkpoint ``trainer.resume`` asks for; see :func:`resolve_resume`."""
        return resolve_resume(resume, self.run_dir)


def resolve_resume(resume: str, run_dir: str) -> str | None:
    """Turn the config value ``trainer.resume`` into a checkpoint directory (or None = start fresh).

    - ``"auto"``: the newest complete checkpoint of ``run_dir``, or None if it has none;
    - ``"off"``: None;
    - a path: a complete checkpoint directory, or a run directory / its ``checkpoints`` directory
      (meaning its newest complete checkpoint). Anything else raises CheckpointError naming
      ``trainer.resume`` and the path.
    """
    if resume == "off":
        return None
    if resume == "auto":
        return CheckpointStore(run_dir).latest()
    if not resume:
        raise CheckpointError("trainer.resume is empty: use 'auto', 'off' or a checkpoint/run directory")
    path = os.path.abspath(os.path.expanduser(resume))
    where = f"trainer.resume={resume!r}"
    if not os.path.exists(path):
        raise CheckpointError(f"{where}: {path} does not exist")
    if not os.path.isdir(path):
        raise CheckpointError(f"{where}: {path} is not a directory")
    if os.path.exists(os.path.join(path, MANIFEST)) or _STEP_RE.match(os.path.basename(path)) \
            or os.path.basename(path).startswith(_TMP_PREFIX):
        try:
            check_complete(path)
        except CheckpointError as e:
            raise CheckpointError(f"{where}: not a complete checkpoint: {e}") from None
        return path
    other_run_dir = os.path.dirname(path) if os.path.basename(path) == CHECKPOINTS_DIR else path
    if os.path.isdir(os.path.join(other_run_dir, CHECKPOINTS_DIR)):
        latest = CheckpointStore(other_run_dir).latest()
        if latest is None:
            raise CheckpointError(f"{where}: the run directory {other_run_dir} has no complete checkpoint")
        return latest
    raise CheckpointError(f"{where}: {path} is neither a checkpoint (no {MANIFEST} manifest) nor a run "
                          f"directory (no {CHECKPOINTS_DIR}/ inside)")


