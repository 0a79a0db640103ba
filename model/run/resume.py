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

from ...pipeline.reader import VideoStore
from .. import checkpoint
from ..checkpoint import CheckpointError
from ..config import ConfigError, TrainConfig, flat_dict


def data_identity(data: Path, flow: bool) -> dict:
    """What a checkpoint records about the data it was trained on."""
    with closing(VideoStore(data)) as store:
        return {"path": str(Path(data).resolve()), "identity": store.identity(flow), "flow": flow}


def _legacy_identity(data: Path, flow: bool) -> str:
    with closing(VideoStore(data)) as store:
        return store.legacy_identity(flow)


def saved_run(run: Path) -> tuple[TrainConfig, int | None]:
    """The config of the training run in folder ``run`` (from its last checkpoint) and, when it has finished,
    the epochs it trained (None while it has not)."""
    last, final = Path(run) / "last.pt", Path(run) / "final.pt"
    if not last.exists():
        raise CheckpointError(f"--resume {run}: no last.pt there, so no `iic train` run to continue")
    ckpt = checkpoint.load(last, ("config", "epoch"), "an `iic train` checkpoint")
    return saved_config(ckpt, last), int(ckpt["epoch"]) if final.exists() else None


def saved_config(ckpt: dict, path: Path) -> TrainConfig:
    """The config a training checkpoint was written with (older layouts read as today's)."""
    if not isinstance(ckpt["config"], dict):
        raise CheckpointError(
            f"{path} is not an `iic train` checkpoint: its config is a "
            f"{type(ckpt['config']).__name__}, not a dict"
        )
    try:
        return TrainConfig.from_dict(ckpt["config"])
    except (ConfigError, TypeError, ValueError, AttributeError) as err:
        raise CheckpointError(
            f"{path} is not an `iic train` checkpoint this version reads: {str(err).splitlines()[0]}"
        ) from None


def refuse_existing(last: Path, what: str) -> None:
    """A fresh run must not write over ``what`` that a ``last.pt`` there says is already in its folder."""
    if last.exists():
        raise CheckpointError(
            f"{last.parent} already holds {what}: pass --resume to continue it or choose another --out"
        )


def refuse_changes(saved: dict, now: dict, free: set[str], path: Path, extra: tuple[str, ...] = ()) -> None:
    """``--resume`` continues a run with its own recipe: every option but the ``free`` ones (dotted names:
    where and how it runs, places, which are compared by meaning, and what may be extended) must be equal;
    ``extra`` names other differences found."""
    old, new = flat_dict(saved), flat_dict(now)
    diff = [
        f"{k}: {old.get(k)} -> {v}"
        for k, v in sorted(new.items())
        if k not in free and k.split(".")[0] not in free and old.get(k) != v
    ]
    diff += list(extra)
    if diff:
        raise CheckpointError(
            f"cannot resume {path} with another recipe ({', '.join(diff[:3])}"
            f"{f' and {len(diff) - 3} more' if len(diff) > 3 else ''}); start a new run for it"
        )


def check_resumable(
    ckpt: dict, path: Path, now: dict, free: set[str], data: Path, extra: tuple[str, ...] = ()
) -> None:
    """Whether the checkpoint ``ckpt`` (loaded from ``path``) may continue as the config ``now``: its saved
    config equal but for ``free`` (`refuse_changes`), and the data the same dataset (`check_data`)."""
    saved = ckpt["config"]
    if not isinstance(saved, dict):
        raise CheckpointError(
            f"{path} is not a checkpoint of this program: its config is a {type(saved).__name__}, not a dict"
        )
    refuse_changes(saved, now, free, path, extra)
    check_data(ckpt.get("data_identity") or {}, saved.get("data"), data, path)


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
            raise CheckpointError(
                f"--resume with other data than {path} was trained on ({saved_data} -> {data}; "
                "the checkpoint predates data identities, so the paths must agree): "
                "use the same --data or a new --out"
            )
        return
    now = data_identity(data, bool(saved.get("flow")))
    # checkpoints of versions before per-shard digests recorded the legacy form (reads every video: asked
    # last)
    if now["identity"] != saved.get("identity") and saved.get("identity") != _legacy_identity(
        data, bool(saved.get("flow"))
    ):
        where = "changed since" if same_path(saved.get("path"), data) else "is not the dataset"
        raise CheckpointError(
            f"--resume: the data in {data} {where} {path} was trained on ({saved.get('path')}, "
            f"identity {saved.get('identity')} -> {now['identity']}): use that data or a new --out"
        )


def file_digest(path: Path) -> str:
    """Content hash of a file (a backbone checkpoint: the same weights wherever the file is)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return f"sha256:{h.hexdigest()[:16]}"
