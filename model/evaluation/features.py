"""Per-video features of a backbone (mean over a video's test clips, centre crop) and their cache.

Used by retrieval and by the linear / kNN probe. A video's feature is the mean over its ``clips`` test
clips (centres ``linspace(T/2, L - T/2, clips)``, see `clips.eval_starts`) of the backbone feature of one
view: ``conv5`` = IIC's conv5 max-pooled (1, 2, 2) and flattened, ``pool`` = the pooled ``out_dim``
feature (`backbones.retrieval_feature`).

Cache: one ``.npz`` per (backbone source, options that change features, data, view, feature), named by a
hash of them. The backbone source is the checkpoint's resolved path + mtime + size (or ``random-init`` + model
+ seed); the data is the folder's resolved path + `VideoStore.identity` (manifest, content settings, size and
CRC32 of every stored frame, flow). Any change gives a new key, so a stale file is never read. One pass over
the clips fills every (view, feature) asked for (`feature_sets`), so e.g. RGB and residual retrieval, or the
conv5 and pool protocols, decode and encode each clip once.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Sequence
from contextlib import closing
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset
from tqdm import tqdm

from ...pipeline.reader import FormatError, VideoStore
from ...pipeline.storage import storage_errors
from .. import checkpoint
from ..checkpoint import describe_error
from ..config import (
    BACKBONES,
    CAMERA_VIEWS,
    EVAL_VIEWS,
    FEATURES,
    ConfigError,
    TrainConfig,
    modalities_for,
)
from ..data import augment
from ..data.clips import ClipConfig, ClipDataset, CorruptTally, collate_clips, worker_errors
from ..data.views import view_input
from ..nets.backbones import VideoBackbone, build_backbone, retrieval_feature

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BackboneSource:
    """Where the backbone weights come from: a checkpoint, or a seeded random initialisation."""

    ckpt: Path | None  # None = random init
    model: str  # backbone preset name
    frames: int
    stride: int
    crop: int
    seed: int = 0
    n_data: int | None = None  # training-list size the checkpoint was trained on
    method: str = "random-init"
    view2: str | None = None  # the second view it was trained with (None: random init)
    # the recipe it was trained with (the method, its views and its section of options: IIC's feature
    # normalisation, heads, negatives...), named in every report of it; None for a random init
    recipe: dict | None = dataclasses.field(default=None, compare=False, hash=False)
    pretrain_dataset: str | None = (
        None  # dataset.json name of the data it was trained on (older checkpoints: None)
    )
    pretrain_path: str | None = None  # where that data was
    chosen: str = ""  # how it was picked when the user did not name it (printed with it)

    def key(self) -> dict:
        """What identifies the weights (for the cache key)."""
        if self.ckpt is None:
            return {"random_init": True, "model": self.model, "seed": self.seed}
        st = self.ckpt.stat()
        return {"ckpt": str(self.ckpt.resolve()), "mtime_ns": st.st_mtime_ns, "size": st.st_size}

    def describe(self) -> str:
        return f"random-init {self.model} (seed {self.seed})" if self.ckpt is None else str(self.ckpt)


class AmbiguousRun(checkpoint.CheckpointError):
    """Several runs could be meant (one-line message naming them)."""


def find_checkpoint(runs: Path) -> Path:
    """The one ``final.pt`` under ``runs`` (a run folder or a folder of runs); more than one is refused,
    naming them: which run an evaluation is for is the user's to say."""
    runs = Path(runs)
    found = sorted(runs.rglob("final.pt"), key=lambda p: p.stat().st_mtime_ns) if runs.is_dir() else []
    if not found:
        raise checkpoint.CheckpointError(
            f"no checkpoint found: no final.pt under {runs} (train first, or pass --ckpt)"
        )
    if len(found) > 1:
        names = ", ".join(str(p) for p in found[::-1][:4]) + (
            f" and {len(found) - 4} more" if len(found) > 4 else ""
        )
        raise AmbiguousRun(
            f"{len(found)} runs under {runs} could be meant ({names}, newest first): pass --ckpt RUN/final.pt"
        )
    return found[0]


def checkpoint_source(ckpt: Path) -> tuple[BackboneSource, dict]:
    """Read a training checkpoint; returns its source description and the loaded dict."""
    state = checkpoint.load(ckpt, ("config", "model"), "an `iic train` checkpoint")
    if not isinstance(state["config"], dict):
        raise checkpoint.CheckpointError(
            f"{ckpt} is not an `iic train` checkpoint: its config is a "
            f"{type(state['config']).__name__}, not a dict"
        )
    try:
        cfg = TrainConfig.from_dict(state["config"])
    except Exception as err:  # a config of another program or version
        raise checkpoint.CheckpointError(
            f"{ckpt} is not an `iic train` checkpoint: its config does not read "
            f"({checkpoint.describe_error(err)})"
        ) from None
    if cfg.model not in BACKBONES:
        raise checkpoint.CheckpointError(
            f"{ckpt} is for backbone {cfg.model!r}, which this iic does not have "
            f"(it has {', '.join(BACKBONES)})"
        )
    trained_on = state.get("data_identity") or {}
    src = BackboneSource(
        Path(ckpt),
        cfg.model,
        cfg.frames,
        cfg.stride,
        cfg.crop,
        cfg.seed,
        n_data=state.get("n_data"),
        method=cfg.method,
        view2=cfg.view2,
        recipe=recipe_of(cfg),
        pretrain_dataset=state.get("dataset"),
        pretrain_path=trained_on.get("path") or str(cfg.data),
    )
    return src, state


def recipe_of(cfg: TrainConfig) -> dict:
    """What a report says of how a backbone was trained: the method, backbone, views and the method's
    options (e.g. ``iic.normalize``, the feature normalisation the paper presets keep and the authors' code
    does not apply)."""
    d = cfg.to_dict()
    keep = (
        "method",
        "model",
        "view2",
        "frames",
        "stride",
        "crop",
        "epochs",
        "batch_size",
        "lr",
        *cfg.sections,
    )
    return {k: d[k] for k in keep if k in d}


def backbone_state(model_state: dict) -> tuple[dict, list[str]]:
    """The ``backbone.*`` entries of a trained net's state dict (prefix stripped) and the other keys,
    which are ignored on purpose (projection heads, method-specific modules)."""
    bb = {k[len("backbone.") :]: v for k, v in model_state.items() if str(k).startswith("backbone.")}
    return bb, sorted(str(k) for k in model_state if not str(k).startswith("backbone."))


def load_backbone(src: BackboneSource, state: dict | None = None) -> VideoBackbone:
    """The backbone of ``src``: checkpoint weights (every backbone key must match, others ignored and
    logged), or a fresh initialisation seeded with ``src.seed``."""
    if src.ckpt is None:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(src.seed)
            return build_backbone(src.model)
    state = state if state is not None else checkpoint.load(src.ckpt)
    net = build_backbone(src.model)
    if not isinstance(state["model"], dict):
        raise checkpoint.CheckpointError(
            f"{src.ckpt} holds no backbone.* weights (its model is a {type(state['model']).__name__})"
        )
    weights, ignored = backbone_state(state["model"])
    if not weights:
        raise checkpoint.CheckpointError(f"{src.ckpt} holds no backbone.* weights")
    checkpoint.load_state(net, weights, f"backbone {src.model}", src.ckpt)
    if ignored:
        log.info(
            "loaded %d backbone tensors from %s; ignored %d non-backbone keys (%s)",
            len(weights),
            src.ckpt,
            len(ignored),
            ", ".join(sorted({k.split(".")[0] for k in ignored})),
        )
    return net


def dataset_name(data: Path) -> str:
    """The ``dataset`` of a processed dataset's dataset.json (``ucf101``, ``kinetics400``, ...)."""
    try:
        return str(json.loads((Path(data) / "dataset.json").read_text())["dataset"])
    except (OSError, ValueError, KeyError):
        raise FormatError(
            f"no processed dataset at {data} (dataset.json missing or unreadable): run `iic-prep extract`"
        ) from None


def is_transfer(src: BackboneSource, data: Path) -> bool:
    """The checkpoint was pretrained on another dataset than ``data`` (e.g. Kinetics-400, evaluated on
    UCF101)."""
    return src.pretrain_dataset is not None and src.pretrain_dataset != dataset_name(data)


def check_dataset_size(src: BackboneSource, n_train: int, data: Path, split: int) -> None:
    """A checkpoint trained on the same dataset with another list size is for another split or copy: refuse
    it. One pretrained on another dataset (named in the checkpoint) is a transfer and evaluated as such; older
    checkpoints, which do not name their dataset, must match in size."""
    if src.n_data is not None and src.n_data != n_train and not is_transfer(src, data):
        raise checkpoint.CheckpointError(
            f"checkpoint {src.ckpt} was trained on {src.n_data} videos but {data} split {split} has "
            f"{n_train} "
            "training videos: a checkpoint for another dataset?"
        )


def data_identity(data: Path) -> str:
    """Hash of what a reader gets from the dataset (`VideoStore.identity`, with its flow): two extractions of
    one video list with other pixels (another seed, --size, --quality) or another flow get other keys."""
    with closing(VideoStore(data)) as store:
        return store.identity(True)


def camera_identity(data: Path) -> str:
    """Hash of the dataset's camera estimates (`VideoStore.camera_identity`): part of the cache key of the
    ``res-aligned`` features."""
    with closing(VideoStore(data)) as store:
        return store.camera_identity()


@dataclass(frozen=True)
class FeatureSpec:
    """Everything that changes a set of features (besides the weights)."""

    data: Path
    split: int
    subset: str  # train | test
    views: tuple[str, ...]
    feature: str = "conv5"
    clips: int = 10

    def validate(self) -> FeatureSpec:
        if self.feature not in FEATURES:
            raise ConfigError(f"unknown feature {self.feature!r}; choose conv5 or pool")
        bad = [v for v in self.views if v not in EVAL_VIEWS]
        if bad:
            raise ConfigError(f"unknown view {bad[0]!r}; choose one of {', '.join(EVAL_VIEWS)}")
        if self.clips < 1:
            raise ConfigError(f"need at least 1 clip per video, got {self.clips}")
        return self


Key = tuple[str, str]  # (view, feature)


def cache_key(src: BackboneSource, spec: FeatureSpec, key: Key, identity: str) -> str:
    """Name of the cache file of one (view, feature) of ``spec``'s list: every view and feature is a file of
    its own, so one pass over the clips can fill several and a later evaluation of any of them reads its
    file."""
    view, feature = key
    parts = {
        "weights": src.key(),
        "model": src.model,
        "frames": src.frames,
        "stride": src.stride,
        "crop": src.crop,
        "data": str(Path(spec.data).resolve()),
        "identity": identity,
        "split": spec.split,
        "subset": spec.subset,
        "view": view,
        "feature": feature,
        "clips": spec.clips,
        "version": 2,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


@dataclass
class VideoFeatures:
    """Per-video features of one list: ``features[view]`` is ``(N, D)`` float32, rows in list order."""

    features: dict[str, np.ndarray]
    labels: np.ndarray  # (N,) int64
    video_ids: list[str]
    cached: bool = False  # True when read from the cache (no extraction)
    clips_per_s: float = 0.0
    path: Path | None = None  # the cache folder
    left_out: dict[str, str] = dataclasses.field(
        default_factory=dict
    )  # id -> reason: corrupt (--skip-corrupt)


def _autocast(device: torch.device):
    return torch.autocast(device.type, dtype=torch.float16, enabled=device.type == "cuda")


@torch.inference_mode()
def extract(
    backbone: nn.Module,
    dataset: ClipDataset,
    views: tuple[str, ...],
    features: tuple[str, ...],
    crop: int,
    device: torch.device,
    batch_size: int = 16,
    workers: int = 0,
    desc: str = "features",
    progress: bool = True,
    items: Sequence[int] | None = None,
) -> tuple[dict[Key, np.ndarray], float, dict[str, str]]:
    """Mean over each video's test clips of each of ``features`` of each view -> ``{(view, feature): (N,
    D)}``, clips/s, and the videos left out ``{id: reason}``. One decode per clip and one forward per view
    serve every feature. With ``dataset.cfg.skip_corrupt``, a video with a corrupt clip is left out: its rows
    are NaN.

    ``dataset`` must be in test mode; clips are centre-cropped to ``crop`` (`augment.AugmentConfig`
    with ``train=False``), mapped to the encoder input by `views.view_input`. ``items``: only these items of
    the dataset (clip ``video * test_clips + clip``; one process's share of a distributed evaluation): the
    rows of the videos none of them belongs to are 0.
    """
    backbone = backbone.to(device).eval()
    items = range(len(dataset)) if items is None else items
    loader = DataLoader(
        Subset(dataset, items),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        collate_fn=collate_clips,
    )
    aug = augment.AugmentConfig(crop=crop, train=False, camera_views=views)
    sums: dict[Key, torch.Tensor] = {}
    counts = torch.zeros(dataset.n_videos, dtype=torch.float64)
    t0, n_clips, corrupt = time.perf_counter(), 0, CorruptTally()
    with tqdm(
        total=len(items), unit="clip", desc=desc, dynamic_ncols=True, leave=False, disable=not progress
    ) as bar:
        for batch in worker_errors(loader):
            bar.update(len(batch.get("corrupt", ())))
            if not corrupt.add(batch):
                continue
            raw = {
                k: v.to(device, non_blocking=True)
                for k, v in augment.clips_of(batch, dataset.cfg.modalities).items()
            }
            B = batch["index"].shape[0]
            hw = augment.batch_hw(batch, dataset.cfg.modalities[0])
            x = augment.apply(raw, augment.sample_params(B, hw, aug, device=device), aug)
            index = batch["index"].long()
            for view in views:
                with _autocast(device):
                    out = backbone(view_input(x, view))
                for feature in features:
                    f = retrieval_feature(out, feature).double().cpu()
                    if (view, feature) not in sums:
                        sums[view, feature] = torch.zeros(dataset.n_videos, f.shape[1], dtype=torch.float64)
                    sums[view, feature].index_add_(0, index, f)
            counts.index_add_(0, index, torch.ones(B, dtype=torch.float64))
            n_clips += B
            bar.update(B)
            bar.set_postfix_str(f"{n_clips / max(time.perf_counter() - t0, 1e-9):.1f} clips/s")
    ids = dataset.video_ids
    expected = torch.bincount(
        torch.as_tensor(list(items), dtype=torch.long) // dataset.cfg.test_clips, minlength=dataset.n_videos
    ).double()
    short = {ids[i] for i in torch.nonzero(counts != expected).flatten().tolist()}
    if short != set(corrupt.videos):
        raise RuntimeError(
            "feature extraction did not see every clip of every video"
        )  # a bug, not user error
    rate = n_clips / max(time.perf_counter() - t0, 1e-9)
    out = {k: (s / counts.clamp_min(1)[:, None]).float().numpy() for k, s in sums.items()}
    rows = [i for i, v in enumerate(ids) if v in corrupt.videos]
    for f in out.values():
        f[rows] = np.nan
    if corrupt.videos:
        log.warning("%s", corrupt.summary())
    return out, rate, dict(corrupt.videos)


def _read_cached(path: Path, ids: list[str]) -> tuple[np.ndarray, dict[str, str]] | None:
    """A cache file's features and left-out videos; None when it is absent, of another list, or damaged (said
    in one line: the features are then computed again and the file rewritten, nothing is lost)."""
    if not path.exists():
        return None
    try:
        with np.load(path) as z:
            if [str(v) for v in z["video_ids"]] != ids:
                return None
            features = np.asarray(z["features"])
            left = json.loads(str(z["left_out"])) if "left_out" in z else {}
    except Exception as err:  # any damage (truncated zip, bad pickle-free array, missing key) is a cache miss
        log.warning(
            "feature cache %s is damaged (%s): computing its features again", path, describe_error(err)
        )
        return None
    if features.shape[0] != len(ids):
        log.warning(
            "feature cache %s holds %d rows for %d videos: computing its features again",
            path,
            features.shape[0],
            len(ids),
        )
        return None
    return features, left


def _write_cached(
    path: Path, f: np.ndarray, dataset: ClipDataset, meta: dict, left_out: dict[str, str]
) -> None:
    tmp = path.with_name(f".{path.stem}.tmp.npz")
    try:
        with storage_errors(
            path.parent,
            what="the feature cache",
            kept="the data and the checkpoint are untouched",
            then="run the evaluation again",
        ):
            path.parent.mkdir(parents=True, exist_ok=True)
            np.savez(
                tmp,
                features=f,
                labels=dataset.labels.astype(np.int64),
                video_ids=np.array(dataset.video_ids),
                meta=json.dumps(meta, default=str),
                left_out=json.dumps(left_out),
            )
            tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass
class FeatureSets:
    """`feature_sets`' answer: ``values[(view, feature)]`` (N, D) in list order (NaN rows: left out)."""

    values: dict[Key, np.ndarray]
    dataset: ClipDataset
    cached: bool  # every one read from the cache
    clips_per_s: float  # of the extraction (0 when nothing was extracted)
    left_out: dict[str, str]  # id -> reason of the videos with a corrupt clip (``skip_corrupt``)


def feature_sets(
    src: BackboneSource,
    spec: FeatureSpec,
    features: tuple[str, ...],
    cache_dir: Path | None,
    device: torch.device,
    batch_size: int = 16,
    workers: int = 0,
    backbone: nn.Module | None = None,
    state: dict | None = None,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> FeatureSets:
    """Every (view, feature) of ``spec.views`` x ``features`` for ``spec``'s list: those in ``cache_dir``
    read, the others extracted together in one pass over the clips and cached. ``skip_corrupt``: a video with
    a corrupt clip is left out (NaN rows, listed) instead of stopping the extraction. ``progress=False``: no
    progress bar (work side by side, `model/sweep.py`)."""
    spec.validate()
    for feature in features:
        dataclasses.replace(spec, feature=feature).validate()
    clip_cfg = ClipConfig(
        frames=src.frames,
        stride=src.stride,
        modalities=modalities_for(spec.views),
        test_clips=spec.clips,
        skip_corrupt=skip_corrupt,
    )
    dataset = ClipDataset(spec.data, spec.split, spec.subset, clip_cfg, mode="test")
    keys = [(v, f) for v in spec.views for f in features]
    identity = data_identity(spec.data) if cache_dir else ""
    # the aligned views depend on the camera estimates too (`iic-prep camera` may be run again)
    camera = camera_identity(spec.data) if cache_dir and set(spec.views) & set(CAMERA_VIEWS) else ""
    names = {k: cache_key(src, spec, k, identity + (camera if k[0] in CAMERA_VIEWS else "")) for k in keys}
    paths = (
        {k: Path(cache_dir) / f"features-{spec.subset}-{k[0]}-{k[1]}-{names[k]}.npz" for k in keys}
        if cache_dir
        else {}
    )
    read = {k: got for k in paths if (got := _read_cached(paths[k], dataset.video_ids)) is not None}
    out = {k: f for k, (f, _) in read.items()}
    left_out = {v: r for _, lo in read.values() for v, r in lo.items()}
    missing = [k for k in keys if k not in out]
    if not missing:
        log.info(
            "features of %d %s videos read from cache %s (extraction skipped)",
            dataset.n_videos,
            spec.subset,
            cache_dir,
        )
        return FeatureSets(out, dataset, True, 0.0, left_out)
    if backbone is None:
        backbone = load_backbone(src, state)
    views = tuple(dict.fromkeys(v for v, _ in missing))
    feats = tuple(dict.fromkeys(f for _, f in missing))
    new, rate, skipped = extract(
        backbone,
        dataset,
        views,
        feats,
        src.crop,
        device,
        batch_size,
        workers,
        desc=f"{spec.subset} features",
        progress=progress,
    )
    log.info(
        "extracted %s features of %s for %d %s videos x %d clips at %.1f clips/s",
        "+".join(feats),
        "+".join(views),
        dataset.n_videos,
        spec.subset,
        spec.clips,
        rate,
    )
    for k, f in new.items():
        if k in paths:
            _write_cached(paths[k], f, dataset, {**asdict(spec), "view": k[0], "feature": k[1]}, skipped)
    out.update({k: new[k] for k in missing})
    return FeatureSets(out, dataset, False, rate, {**left_out, **skipped})


def as_video_features(
    sets: FeatureSets, views: tuple[str, ...], feature: str, cache_dir: Path | None
) -> VideoFeatures:
    """One ``feature`` of ``views`` out of ``sets``, without the videos left out as corrupt."""
    ids = sets.dataset.video_ids
    keep = np.array([v not in sets.left_out for v in ids], bool)
    return VideoFeatures(
        {v: sets.values[v, feature][keep] for v in views},
        sets.dataset.labels.astype(np.int64)[keep],
        [v for v, k in zip(ids, keep, strict=True) if k],
        cached=sets.cached,
        clips_per_s=sets.clips_per_s,
        path=Path(cache_dir) if cache_dir else None,
        left_out=sets.left_out,
    )


def data_record(src: BackboneSource, data: Path, split: int) -> dict:
    """Both datasets of an evaluation: what the backbone was pretrained on and what it is evaluated on."""
    store = VideoStore(data)
    pretrained = (
        None
        if src.ckpt is None
        else {"dataset": src.pretrain_dataset, "path": src.pretrain_path, "videos": src.n_data}
    )
    return {
        "pretrained_on": pretrained,
        "evaluated_on": {
            "dataset": store.meta["dataset"],
            "path": str(data),
            "split": split,
            "unlabelled_left_out": sum(1 for r in store.rows if r.in_list(split, "unlabelled")),
        },
        "transfer": is_transfer(src, data),
    }


def data_line(record: dict) -> str:
    """``pretrained on kinetics400 (650 videos, data/kinetics400); evaluated on ucf101 split 1
    (data/ucf101)``."""
    p, e = record["pretrained_on"], record["evaluated_on"]
    if p is None:
        head = "no pretraining (random init)"
    else:
        head = f"pretrained on {p['dataset'] or 'an unnamed dataset'} ({p['videos']} videos, {p['path']})"
    line = f"{head}; evaluated on {e['dataset']} split {e['split']} ({e['path']})"
    if e["unlabelled_left_out"]:
        line += f"; {e['unlabelled_left_out']} unlabelled videos are in neither list and left out"
    return line


def failed_videos(data: Path, split: int, subset: str) -> list[tuple[str, str]]:
    """Listed videos of ``split``'s ``subset`` list that extraction failed on: (id, reason)."""
    store = VideoStore(data)
    return [(r.id, r.reason) for r in store.rows if r.in_list(split, subset) and not r.ok]
