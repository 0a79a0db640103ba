"""What ``--resume`` compares: meaning, not spelling.

A run may be continued from another working directory, with the data given as a relative instead of an
absolute path, after its run folder was moved, or with its dataset moved elsewhere. So paths are compared
resolved, the run folder is wherever its ``last.pt`` is, and the data by identity
(`VideoStore.identity`: manifest, content settings and stored frame sizes), which a checkpoint records
under ``data_identity``. Checkpoints without it (older) fall back to the resolved data path.
"""
from __future__ import annotations

import hashlib
from contextlib import closing
from pathlib import Path
from typing import Any

from ..pipeline.shards import VideoStore
from .checkpoint import CheckpointError, describe_error


def data_identity(data: Path, flow: bool) -> dict:
    """What a checkpoint records about the data it was trained on."""
    with closing(VideoStore(data)) as store:
        return {"path": str(Path(data).resolve()), "identity": store.identity(flow), "flow": flow}


def _legacy_identity(data: Path, flow: bool) -> str:
    with closing(VideoStore(data)) as store:
        return store.legacy_identity(flow)


def refuse_existing(last: Path, what: str) -> None:
    """A fresh run must not write over ``what`` that a ``last.pt`` there says is already in its folder."""
    if last.exists():
        raise CheckpointError(f"{last.parent} already holds {what}: pass --resume to continue it or choose another --out")


def refuse_changes(saved: dict, now: dict, free: set[str], path: Path, extra: tuple[str, ...] = ()) -> None:
    """``--resume`` needs the saved config: every key but the ``free`` ones (what may change between sessions,
    and places, which are compared by meaning) must be equal; ``extra`` names other differences found."""
    diff = [f"{k}: {saved.get(k)} -> {v}" for k, v in sorted(now.items()) if k not in free and saved.get(k) != v]
    diff += list(extra)
    if diff:
        raise CheckpointError(f"--resume with a different config than {path} ({', '.join(diff[:3])}); "
                              "use the same flags or a new --out")


def load_states(ckpt: dict, path: Path, **objects: Any) -> None:
    """``obj.load_state_dict(ckpt[name])`` for each ``name=obj``; a damaged or foreign state is one line."""
    try:
        for name, obj in objects.items():
            obj.load_state_dict(ckpt[name])
    except Exception as err:  # a damaged or foreign optimiser / scheduler / scaler state
        raise CheckpointError(f"cannot resume from {path}: {describe_error(err)}") from None


def same_path(a: str | Path | None, b: str | Path | None) -> bool:
    """The same file system location (or both None), however spelled."""
    if a is None or b is None:
        return a is None and b is None
    return Path(a) == Path(b) or Path(a).resolve() == Path(b).resolve()


def check_data(saved: dict, saved_data: str, data: Path, path: Path) -> None:
    """Refuse resuming the checkpoint at ``path`` (trained on ``saved_data``, recorded as ``saved``, a
    `data_identity` dict or {} for older checkpoints) on ``data`` unless it is the same dataset."""
    if not saved:
        if not same_path(saved_data, data):
            raise CheckpointError(f"--resume with other data than {path} was trained on ({saved_data} -> {data}; "
                                  "the checkpoint predates data identities, so the paths must agree): "
                                  "use the same --data or a new --out")
        return
    now = data_identity(data, bool(saved.get("flow")))
    # checkpoints of versions before per-shard digests recorded the legacy form (reads every video: asked last)
    if now["identity"] != saved.get("identity") and saved.get("identity") != _legacy_identity(data, bool(saved.get("flow"))):
        where = "changed since" if same_path(saved.get("path"), data) else "is not the dataset"
        raise CheckpointError(f"--resume: the data in {data} {where} {path} was trained on ({saved.get('path')}, "
                              f"identity {saved.get('identity')} -> {now['identity']}): use that data or a new --out")


def file_digest(path: Path) -> str:
    """Content hash of a file (a backbone checkpoint: the same weights wherever the file is)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"
