"""``iic eval retrieval`` and ``iic eval linear``: frozen-feature evaluations of a trained backbone.

Retrieval (docs/method.md, "Evaluation protocols"): gallery = the split's train videos, queries = its test
videos, every extracted one (videos whose extraction failed are listed in the output, never silently
dropped). A video's feature is the mean over its test clips (`features.feature_sets`); cosine
similarity; top-k for k in 1, 5, 10, 20, 50 capped at the gallery size (`retrieval.retrieval_topk`).

Linear probe: the same per-video features (``pool`` by default), standardised with the train mean/std,
then a multinomial logistic regression (full-batch L-BFGS) on the train list, or a cosine kNN vote;
top-1 on the test list.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ...pipeline.reader import VideoStore
from ...pipeline.storage import storage_errors
from .. import checkpoint
from ..config import ConfigError, TrainConfig
from ..distributed import resolve_device
from .features import (
    AmbiguousRun,
    BackboneSource,
    FeatureSets,
    FeatureSpec,
    VideoFeatures,
    as_video_features,
    check_dataset_size,
    checkpoint_source,
    data_line,
    data_record,
    failed_videos,
    feature_sets,
    find_checkpoint,
    load_backbone,
)
from .protocol import default_input, protocol_of_source
from .retrieval import DEFAULT_KS, retrieval_topk

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceConfig:
    """Which backbone to evaluate. ``ckpt`` None and not ``random_init``: the newest final.pt under ``runs``.
    ``model``/``frames``/``crop`` default to the checkpoint's training config (TrainConfig defaults for a
    random init without a checkpoint)."""

    ckpt: Path | None = None
    runs: Path = Path("data/runs")
    random_init: bool = False
    model: str | None = None
    frames: int | None = None
    crop: int | None = None
    seed: int = 0


def resolve_source(cfg: SourceConfig) -> tuple[BackboneSource, dict | None]:
    """The backbone to evaluate and, for a checkpoint, its loaded state."""
    if cfg.random_init and cfg.ckpt is not None:
        raise ConfigError("--ckpt and --random-init exclude each other")
    if not cfg.random_init:
        newest = cfg.ckpt is None
        src, state = checkpoint_source(find_checkpoint(cfg.runs) if newest else cfg.ckpt)
        if cfg.model not in (None, src.model):
            raise ConfigError(f"--model {cfg.model} differs from the checkpoint's model {src.model}")
        chosen = f"the only final.pt under {cfg.runs}; --ckpt to choose" if newest else ""
        if newest:
            log.warning("no --ckpt: evaluating %s, the only final.pt under %s", src.ckpt, cfg.runs)
        return dataclasses.replace(
            src, frames=cfg.frames or src.frames, crop=cfg.crop or src.crop, chosen=chosen
        ), state
    base, chosen = TrainConfig(), ""
    if cfg.model is None:  # the same config as the run, when there is one: the baseline it is read against
        try:
            newest = find_checkpoint(cfg.runs)
            trained, _ = checkpoint_source(newest)
            base = dataclasses.replace(
                base, model=trained.model, frames=trained.frames, stride=trained.stride, crop=trained.crop
            )
            chosen = f"model, clip and crop of {newest}; --model to choose"
            log.warning(
                "--random-init without --model: the %s backbone, %d-frame clips and %d crop of the run %s",
                trained.model,
                trained.frames,
                trained.crop,
                newest,
            )
        except AmbiguousRun as err:
            raise AmbiguousRun(f"--random-init without --model: {err} (or pass --model)") from None
        except checkpoint.CheckpointError:
            chosen = "TrainConfig defaults: no run found; --model to choose"
    return BackboneSource(
        None,
        cfg.model or base.model,
        cfg.frames or base.frames,
        base.stride,
        cfg.crop or base.crop,
        cfg.seed,
        chosen=chosen,
    ), None


@dataclass(frozen=True)
class RetrievalConfig:
    data: Path = Path("data/ucf101")
    split: int = 1
    source: SourceConfig = SourceConfig()
    modality: str | None = None  # the view retrieved (rgb, res, flow-u, flow-v); None: the method's protocol
    merge: bool = False  # concatenate the (L2-normalised) RGB and modality features
    feature: str | None = None  # None: the method's own protocol (model/protocol.py)
    clips: int = 10
    center: bool | None = None  # None: the method's own protocol
    ks: tuple[int, ...] = DEFAULT_KS
    batch_size: int = 16
    workers: int = 0
    device: str = "auto"
    out: Path | None = (
        None  # default: <run folder>/eval/retrieval-<data>-s<split>-<views>-<feature> (`eval_dir`)
    )
    cache: Path | None = None  # feature cache folder; default: <run folder>/eval/features (`eval_base`)
    skip_corrupt: bool = False  # leave out (and list) videos with a corrupt clip instead of stopping
    n_show: int = 6  # queries drawn in the PNG

    @property
    def views(self) -> tuple[str, ...]:
        return ("rgb", self.modality) if self.merge else (self.modality,)

    def validate(self) -> RetrievalConfig:
        if self.merge and self.modality == "rgb":
            raise ConfigError(
                "--merge concatenates RGB with another modality: choose --modality res, flow-u or flow-v"
            )
        FeatureSpec(
            self.data, self.split, "train", self.views, self.feature or "conv5", self.clips
        ).validate()
        return self

    def with_protocol(self, method: str, view2: str | None = None) -> RetrievalConfig:
        """Fill the modality / feature / centring left open (None) with ``method``'s protocol (a random init:
        IIC's)."""
        proto = protocol_of_source(method)
        return dataclasses.replace(
            self,
            feature=proto.feature if self.feature is None else self.feature,
            center=proto.center if self.center is None else self.center,
            modality=default_input(method, view2) if self.modality is None else self.modality,
        )

    def name_parts(self) -> list[str]:
        """What tells this retrieval from others of the same backbone (its folder's name, `eval_dir`)."""
        return [
            "+".join(self.views),
            self.feature,
            *(["centred"] if self.center else []),
            *([f"{self.clips}clips"] if self.clips != 10 else []),
        ]

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def combine(vf: VideoFeatures, views: tuple[str, ...]) -> np.ndarray:
    """One view's features as they are, or several views each L2-normalised then concatenated (merge), so
    each view weighs the same in the cosine similarity whatever its scale."""
    if len(views) == 1:
        return vf.features[views[0]]
    return np.concatenate(
        [F.normalize(torch.from_numpy(vf.features[v]), dim=1).numpy() for v in views], axis=1
    )


def picked_for_you(source: SourceConfig) -> str:
    """``backbone picked for you: <backbone> (<how>)`` when the user did not name the backbone, else ""."""
    if source.ckpt is not None or (source.random_init and source.model is not None):
        return ""
    src, _ = resolve_source(source)
    return f"backbone picked for you: {src.describe()} ({src.chosen})" if src.chosen else ""


def trained_on(source: SourceConfig) -> Path | None:
    """The data the backbone of ``source`` was trained on, when that folder is there (None for a random
    init, or when it moved)."""
    if source.random_init:
        return None
    try:
        src, _ = checkpoint_source(source.ckpt or find_checkpoint(source.runs))
    except checkpoint.CheckpointError:
        return None  # the evaluation itself says what is wrong with the checkpoint
    path = Path(src.pretrain_path) if src.pretrain_path else None
    return path if path is not None and (path / "dataset.json").exists() else None


def results_written(out: Path):
    """A full disk or an unwritable folder while writing an evaluation's results: one line naming ``out``."""
    return storage_errors(
        out,
        what="the results",
        kept="the data, the checkpoint and the cached features are untouched",
        then="run the evaluation again",
    )


def eval_base(src: BackboneSource, runs: Path) -> Path:
    """Where a backbone's evaluations go: ``<run folder>/eval``, or a folder of its own under ``runs`` for a
    random initialisation. Its ``features`` folder caches the features of every evaluation of it."""
    if src.ckpt is not None:
        return src.ckpt.parent / "eval"
    return Path(runs) / f"random-init-{src.model}-seed{src.seed}" / "eval"


def eval_dir(src: BackboneSource, runs: Path, kind: str, data: Path, split: int, *parts: str) -> Path:
    """One evaluation's own folder, named by what it evaluates, so that evaluations never overwrite each
    other: ``<eval base>/<kind>-<dataset folder>-s<split>-<parts...>``, e.g.
    ``retrieval-ucf101-s1-res-conv5``."""
    return eval_base(src, runs) / "-".join([kind, Path(data).name, f"s{split}", *parts])


def gallery_and_queries(
    cfg_data: Path,
    split: int,
    src: BackboneSource,
    state: dict | None,
    views: tuple[str, ...],
    feature: str,
    clips: int,
    cache: Path,
    device: str,
    batch_size: int,
    workers: int,
    skip_corrupt: bool = False,
) -> tuple[VideoFeatures, VideoFeatures]:
    """Per-video features of the train list (gallery) and test list (queries), extracted or cached; with
    ``skip_corrupt`` a video with a corrupt clip is left out of its list (`VideoFeatures.left_out`)."""
    sets = list_features(
        cfg_data,
        split,
        src,
        state,
        views,
        (feature,),
        clips,
        cache,
        device,
        batch_size,
        workers,
        skip_corrupt,
    )
    return as_video_features(sets["train"], views, feature, cache), as_video_features(
        sets["test"], views, feature, cache
    )


def list_features(
    data: Path,
    split: int,
    src: BackboneSource,
    state: dict | None,
    views: tuple[str, ...],
    features: tuple[str, ...],
    clips: int,
    cache: Path | None,
    device: str,
    batch_size: int,
    workers: int,
    skip_corrupt: bool = False,
    progress: bool = True,
) -> dict[str, FeatureSets]:
    """`feature_sets` of the train and the test list: each (view, feature) read from ``cache`` or extracted in
    one pass over the list's clips, with one backbone for both lists; refuses a checkpoint made for another
    list size first (`check_dataset_size`)."""
    check_dataset_size(src, len(VideoStore(data).ok_rows(split, "train")), data, split)
    dev, backbone = resolve_device(device), load_backbone(src, state)
    return {
        subset: feature_sets(
            src,
            FeatureSpec(data, split, subset, views, features[0], clips),
            features,
            cache,
            dev,
            batch_size,
            workers,
            backbone=backbone,
            skip_corrupt=skip_corrupt,
            progress=progress,
        )
        for subset in ("train", "test")
    }


def left_out(data: Path, split: int, features: dict[str, VideoFeatures]) -> dict[str, list[tuple[str, str]]]:
    """Per list, the videos not scored: failed at extraction, or left out as corrupt (--skip-corrupt)."""
    return {
        s: failed_videos(data, split, s) + [(v, f"corrupt, left out: {r}") for v, r in vf.left_out.items()]
        for s, vf in features.items()
    }


def prefetch_features(
    cfg: RetrievalConfig, views: tuple[str, ...], features: tuple[str, ...], progress: bool = True
) -> None:
    """Fill ``cfg.cache`` with every (view, feature) of ``cfg``'s backbone for both lists, one pass over each
    list's clips, so that retrievals of any of them that follow (one per view, or the conv5 and pool
    protocols of a random init) read their features instead of decoding and encoding every clip again.
    ``progress=False``: no progress bars (work side by side)."""
    if cfg.cache is None:
        raise ValueError("prefetch_features needs a cache folder (RetrievalConfig.cache)")
    src, state = resolve_source(cfg.source)
    list_features(
        cfg.data,
        cfg.split,
        src,
        state,
        views,
        features,
        cfg.clips,
        Path(cfg.cache),
        cfg.device,
        cfg.batch_size,
        cfg.workers,
        progress=progress,
    )


def evaluate_retrieval(cfg: RetrievalConfig) -> dict:
    """Run the retrieval protocol; writes ``retrieval.json`` and ``retrieval.png`` in the output folder and
    returns the JSON dict (plus ``cached``: whether both feature sets came from the cache)."""
    src, state = resolve_source(cfg.source)
    cfg = cfg.with_protocol(src.method, src.view2).validate()
    out = (
        Path(cfg.out)
        if cfg.out
        else eval_dir(src, cfg.source.runs, "retrieval", cfg.data, cfg.split, *cfg.name_parts())
    )
    gallery, queries = gallery_and_queries(
        cfg.data,
        cfg.split,
        src,
        state,
        cfg.views,
        cfg.feature,
        cfg.clips,
        Path(cfg.cache) if cfg.cache else eval_base(src, cfg.source.runs) / "features",
        cfg.device,
        cfg.batch_size,
        cfg.workers,
        cfg.skip_corrupt,
    )
    g, q = combine(gallery, cfg.views), combine(queries, cfg.views)
    res = retrieval_topk(q, queries.labels, g, gallery.labels, ks=cfg.ks, center=cfg.center)
    failed = left_out(cfg.data, cfg.split, {"train": gallery, "test": queries})
    result = {
        "config": cfg.to_dict(),
        "checkpoint": src.describe(),
        "chosen": src.chosen,
        "trained_with": src.recipe,
        "data": data_record(src, cfg.data, cfg.split),
        "backbone": {
            "model": src.model,
            "frames": src.frames,
            "stride": src.stride,
            "crop": src.crop,
            "method": src.method,
            "random_init": src.ckpt is None,
        },
        "feature_dim": int(g.shape[1]),
        "merge_note": "RGB and modality features each L2-normalised, then concatenated"
        if cfg.merge
        else None,
        **res.to_dict(),
        "counts": {
            "queries": res.n_queries,
            "gallery": res.n_gallery,
            "failed_queries": len(failed["test"]),
            "failed_gallery": len(failed["train"]),
        },
        "failed": {s: [{"id": i, "reason": r} for i, r in rows] for s, rows in failed.items()},
        "cached": gallery.cached and queries.cached,
        "clips_per_s": max(gallery.clips_per_s, queries.clips_per_s),
        "queries": [
            {
                "id": vid,
                "label": int(lab),
                "nearest": [gallery.video_ids[j] for j in res.indices[i]],
                "nearest_labels": [int(gallery.labels[j]) for j in res.indices[i]],
                "similarities": [round(float(s), 6) for s in res.similarities[i]],
            }
            for i, (vid, lab) in enumerate(zip(queries.video_ids, queries.labels, strict=True))
        ],
    }
    from .report import retrieval_figure

    with results_written(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(result, indent=1))
        retrieval_figure(result, cfg.data, out / "retrieval.png", n_show=cfg.n_show)
    result["out"] = str(out)
    return result


def table_lines(result: dict) -> list[str]:
    """The terminal table of a retrieval result."""
    ks = list(result["topk"])
    lines = [
        f"retrieval of {result['counts']['queries']} queries against {result['counts']['gallery']} "
        "gallery videos "
        f"({result['feature_dim']}-d {result['config']['feature']}, {'+'.join(_views(result))}"
        f"{', centred' if result['center'] else ''}) — {result['checkpoint']}"
    ]
    if result.get("chosen"):
        lines.insert(0, f"backbone picked for you: {result['checkpoint']} ({result['chosen']})")
    lines.append("  ".join(f"{'top' + str(k):>7}" for k in ks))
    lines.append("  ".join(f"{result['topk'][k]:7.1f}" for k in ks))
    if result["capped"]:
        lines.append(
            f"k capped at the gallery size {result['n_gallery']} for k = "
            f"{', '.join(map(str, result['capped']))}"
        )
    if result["merge_note"]:
        lines.append(result["merge_note"])
    for subset, rows in result["failed"].items():
        if rows:
            lines.append(
                f"{len(rows)} {subset} video(s) left out (failed extraction, or corrupt): "
                + ", ".join(r["id"] for r in rows[:5])
                + (" ..." if len(rows) > 5 else "")
            )
    if "data" in result:
        lines.append(data_line(result["data"]))
    lines.append(
        f"features {'read from cache' if result['cached'] else 'extracted'}; results in {result['out']}"
    )
    return lines


def _views(result: dict) -> list[str]:
    c = result["config"]
    return ["rgb", c["modality"]] if c["merge"] else [c["modality"]]


# ----------------------------------------------------------------------------------------------------------
# linear probe and kNN


@dataclass(frozen=True)
class LinearConfig:
    data: Path = Path("data/ucf101")
    split: int = 1
    source: SourceConfig = SourceConfig()
    modality: str | None = None  # None: the method's protocol (model/protocol.py), as retrieval
    feature: str | None = None  # None: the method's protocol
    clips: int = 10
    knn: int | None = None  # None = logistic regression; K = cosine kNN vote
    weight_decay: float = 1e-3  # L2 penalty of the logistic regression (on standardised features)
    steps: int = 100  # L-BFGS iterations
    batch_size: int = 16
    workers: int = 0
    device: str = "auto"
    out: Path | None = None
    skip_corrupt: bool = False  # leave out (and list) videos with a corrupt clip instead of stopping

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self), default=str))


def logistic_regression(
    x: torch.Tensor, y: torch.Tensor, n_classes: int, weight_decay: float, steps: int, seed: int = 0
) -> torch.nn.Linear:
    """Multinomial logistic regression ``x (N, D) -> n_classes`` by full-batch L-BFGS on mean CE + L2."""
    torch.manual_seed(seed)
    clf = torch.nn.Linear(x.shape[1], n_classes).double()
    opt = torch.optim.LBFGS(
        clf.parameters(), lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe"
    )
    x, y = x.double(), y.long()

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(clf(x), y) + weight_decay * clf.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return clf


def knn_predict(
    train: torch.Tensor, train_labels: torch.Tensor, test: torch.Tensor, k: int, n_classes: int
) -> torch.Tensor:
    """Cosine kNN: each of the k nearest train videos votes for its label; ties go to the class with the
    larger summed similarity. Returns (Q,) predicted labels."""
    k = min(k, train.shape[0])
    sim = F.normalize(test.double(), dim=1) @ F.normalize(train.double(), dim=1).T  # (Q, N)
    top_sim, top = sim.topk(k, dim=1)
    votes = torch.zeros(test.shape[0], n_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels[top], torch.ones_like(top_sim))
    sims = torch.zeros_like(votes).scatter_add_(1, train_labels[top], top_sim)
    return (votes + 1e-3 * sims / (k + 1)).argmax(1)  # summed similarity < k+1 only breaks ties


def evaluate_linear(cfg: LinearConfig) -> dict:
    """Linear (or kNN) read-out of frozen per-video features; writes ``linear.json`` and returns it."""
    if cfg.knn is not None and cfg.knn < 1:
        raise ConfigError(f"--knn must be >= 1, got {cfg.knn}")
    src, state = resolve_source(cfg.source)
    proto = protocol_of_source(src.method)
    cfg = dataclasses.replace(
        cfg,
        modality=cfg.modality or default_input(src.method, src.view2),
        feature=cfg.feature or proto.feature,
    )
    FeatureSpec(cfg.data, cfg.split, "train", (cfg.modality,), cfg.feature, cfg.clips).validate()
    kind = "linear" if cfg.knn is None else f"knn{cfg.knn}"
    out = (
        Path(cfg.out)
        if cfg.out
        else eval_dir(
            src,
            cfg.source.runs,
            kind,
            cfg.data,
            cfg.split,
            cfg.modality,
            cfg.feature,
            *([f"{cfg.clips}clips"] if cfg.clips != 10 else []),
        )
    )
    views = (cfg.modality,)
    train, test = gallery_and_queries(
        cfg.data,
        cfg.split,
        src,
        state,
        views,
        cfg.feature,
        cfg.clips,
        eval_base(src, cfg.source.runs) / "features",
        cfg.device,
        cfg.batch_size,
        cfg.workers,
        cfg.skip_corrupt,
    )
    n_classes = len(VideoStore(cfg.data).classes)
    xtr, xte = (
        torch.from_numpy(train.features[cfg.modality]).double(),
        torch.from_numpy(test.features[cfg.modality]).double(),
    )
    ytr, yte = torch.from_numpy(train.labels), torch.from_numpy(test.labels)
    if cfg.knn is not None:
        pred = knn_predict(xtr, ytr, xte, cfg.knn, n_classes)
        method = f"cosine {min(cfg.knn, len(ytr))}-NN vote"
    else:
        mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
        clf = logistic_regression(
            (xtr - mean) / std, ytr, n_classes, cfg.weight_decay, cfg.steps, cfg.source.seed
        )
        with torch.no_grad():
            pred = clf((xte - mean) / std).argmax(1)
        method = "logistic regression (standardised features, L-BFGS)"
    top1 = 100.0 * float((pred == yte).double().mean())
    failed = left_out(cfg.data, cfg.split, {"test": test})["test"]
    result = {
        "config": cfg.to_dict(),
        "checkpoint": src.describe(),
        "chosen": src.chosen,
        "trained_with": src.recipe,
        "data": data_record(src, cfg.data, cfg.split),
        "method": method,
        "top1": top1,
        "counts": {"train": len(ytr), "test": len(yte), "failed_test": len(failed)},
        "cached": train.cached and test.cached,
        "out": str(out),
    }
    with results_written(out):
        out.mkdir(parents=True, exist_ok=True)
        (out / ("knn.json" if cfg.knn else "linear.json")).write_text(json.dumps(result, indent=1))
    return result
