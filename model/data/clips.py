"""Clip streaming: a Dataset over the shards that yields dicts of uint8 ``(C, T, H, W)`` clips.

* train: one clip of ``T`` frames (stride ``stride``) per video per epoch, at a random start drawn from a
  per-sample seed that the sampler hands out (so the clips do not depend on the number of workers, and a
  resumed run sees exactly the clips an uninterrupted one would).
* train with ``clips_per_sample=2`` (DualVar): two clips of the same video at independent random starts;
  clip 0 is exactly the clip of the one-clip mode for the same seed, clip 1 comes under the keys
  ``<modality>_1`` (``rgb_1``, ...), and ``start``/``start_1`` say where each begins.
* test: ``n`` clips per video with centres ``linspace(T/2, L - T/2, n)``; an item is one (video, clip).

Short videos (fewer than ``(T - 1) * stride + 1`` usable frames) are looped: frame indices wrap around
modulo the usable length, so every listed video yields clips. Flow pair ``t`` is the motion from frame
``t`` to ``t + 1``; a video of ``L`` frames has ``L - 1`` pairs, so when flow is loaded the usable
length is ``L - 1`` for every modality and frame ``t`` of every view lines up with flow pair ``t``.

Clips ship as uint8; float conversion and augmentation happen in batch on the training device. The
``camera`` modality ships, for every clip frame t, ``prev`` = frame t-1 (uint8 ``(3, T, H, W)``; frame 0 of a
video is its own previous frame) and ``camera`` = the camera's motion from frame t-1 to frame t (float32
``(T, 2, 3)``, `VideoStore.camera`; the identity at frame 0): the aligned residual is made of them and the
RGB clip on the device, before the crop (model/data/align.py).

Videos of one dataset may differ in frame size (``iic-prep extract --size S`` keeps each video's aspect
ratio): a sample carries its own ``hw`` = (H, W), and `collate_clips` zero-pads the clips of a batch at the
bottom and right to the largest (H, W) of the batch. Augmentation draws each crop inside its sample's own
``hw`` (`augment.sample_params`), so no padding ever reaches a crop.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler, default_collate

from ...pipeline.reader import FormatError, ManifestRow, VideoStore
from ..config import MODALITIES, TrainConfig

log = logging.getLogger(__name__)


class DataError(ValueError):
    """The data cannot serve the request (one-line message)."""


@dataclass(frozen=True)
class ClipConfig:
    frames: int = TrainConfig.frames  # T
    stride: int = TrainConfig.stride
    modalities: tuple[str, ...] = ("rgb", "res")
    test_clips: int = 10
    clips_per_sample: int = 1  # train mode: 1 (IIC) or 2 (DualVar: two random times of one video)
    skip_corrupt: bool = (
        False  # a clip whose stored bytes are damaged is left out (`collate_clips`), not an error
    )


def clip_seed(seed: int, epoch: int, index: int, rank: int = 0) -> int:
    """A 63-bit seed for one sample (or step) of one epoch, independent of worker count and order; ``rank``
    > 0: another stream for each process of a distributed run (rank 0's is the single process's)."""
    key = f"{seed}/{epoch}/{index}" + (f"/{rank}" if rank else "")
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def clip_indices(length: int, start: int, frames: int, stride: int) -> np.ndarray:
    """Frame indices of a clip; wraps around (loops) when the video is shorter than the clip."""
    return (start + np.arange(frames) * stride) % length


def train_start(length: int, frames: int, stride: int, rng: np.random.Generator) -> int:
    """Uniform random start among the starts whose clip fits; 0 for videos that must loop."""
    span = (frames - 1) * stride + 1
    return int(rng.integers(0, length - span + 1)) if length >= span else 0


def pair_starts(length: int, frames: int, stride: int, rng: np.random.Generator) -> tuple[int, int]:
    """Two independent starts: clip 0's is :func:`train_start`'s (the same draw), clip 1's the next draw.

    A video too short for a whole clip loops (indices wrap), so both starts are then uniform over all
    ``length`` frames: the two clips still come from different times (``train_start`` would give 0 twice).
    """
    span = (frames - 1) * stride + 1
    if length >= span:
        return train_start(length, frames, stride, rng), train_start(length, frames, stride, rng)
    return int(rng.integers(0, length)), int(rng.integers(0, length))


def eval_starts(length: int, frames: int, stride: int, n: int) -> np.ndarray:
    """Starts of ``n`` clips with centres ``linspace(span/2, L - span/2, n)`` (all 0 for short videos); one
    clip (``n = 1``) is the centre clip of the video, not its first."""
    span = (frames - 1) * stride + 1
    if length <= span:
        return np.zeros(n, np.int64)
    centres = np.linspace(span / 2, length - span / 2, n) if n > 1 else np.array([length / 2])
    return np.clip(np.round(centres - span / 2), 0, length - span).astype(np.int64)


class ClipDataset(Dataset):
    """Clips of one split list (``subset`` = ``train`` or ``test``) of a processed dataset.

    ``mode="train"``: item = (video position, seed) from `EpochSampler`; ``mode="test"``: item = an int
    in ``range(len(self))`` = video * test_clips + clip. A sample is a dict: one uint8 ``(C, T, H, W)``
    tensor per modality (``rgb``/``res``: C = 3, ``flow``: C = 2 = (u, v)), ``index`` (the video's row in
    this list, i.e. its memory-bank row), ``label``, ``clip``, ``video`` (the id) and ``hw`` (its frame size).
    """

    def __init__(self, data_dir: Path, split: int, subset: str, cfg: ClipConfig, mode: str = "train") -> None:
        if subset not in ("train", "test") or mode not in ("train", "test"):
            raise DataError(f"subset and mode must be train or test, got {subset!r}, {mode!r}")
        unknown = set(cfg.modalities) - set(MODALITIES)
        if unknown:
            raise DataError(f"unknown modality {sorted(unknown)}; choose from {', '.join(MODALITIES)}")
        if cfg.clips_per_sample not in (1, 2):
            raise DataError(f"clips_per_sample must be 1 or 2, got {cfg.clips_per_sample}")
        self.store = VideoStore(data_dir)
        self.cfg, self.mode, self.subset, self.split = cfg, mode, subset, split
        if "flow" in cfg.modalities and not self.store.has_flow:
            raise DataError(f"no optical flow in {data_dir}: run `iic-prep flow` first")
        if "camera" in cfg.modalities and not self.store.has_camera:
            raise DataError(
                f"no camera motion estimate in {data_dir}: run `iic-prep camera --data {data_dir}` first "
                "(the res-aligned view needs it)"
            )
        self.rows = self._select(split, subset)
        self.lengths = np.array([self._usable_length(r) for r in self.rows])
        self._warn_short()

    def _warn_short(self) -> None:
        """Say once per list how many videos are shorter than a clip: their clips loop (frames repeat)."""
        span = (self.cfg.frames - 1) * self.cfg.stride + 1
        short = int((self.lengths < span).sum())
        if short:
            which = f"all {short}" if short == self.n_videos else f"{short} of the {self.n_videos}"
            log.warning(
                "%s %s videos of split %d are shorter than a clip (%d frames at stride %d span %d "
                "usable frames; shortest %d): their clips loop, frames repeat",
                which,
                self.subset,
                self.split,
                self.cfg.frames,
                self.cfg.stride,
                span,
                int(self.lengths.min()),
            )

    def _select(self, split: int, subset: str) -> list[ManifestRow]:
        rows = self.store.ok_rows(split, subset)
        if "flow" in self.cfg.modalities:
            no_flow = [
                r.id for r in rows if not (self.store.flow_rows.get(r.id) and self.store.flow_rows[r.id].ok)
            ]
            if no_flow:
                raise DataError(
                    f"{len(no_flow)} {subset} videos have no flow (e.g. {no_flow[0]}): "
                    "re-run `iic-prep flow` or train on a non-flow view"
                )
        if not rows:
            raise DataError(f"split {split} has no {subset} videos extracted in {self.store.data_dir}")
        unlabelled = [r.id for r in rows if r.label < 0]
        if unlabelled:  # the adapters never put one in a list; a hand-edited manifest might
            raise DataError(
                f"{len(unlabelled)} {subset} videos have no label (e.g. {unlabelled[0]}): unlabelled "
                "videos belong in no train or test list"
            )
        return rows

    def _usable_length(self, row: ManifestRow) -> int:
        return row.n_frames - 1 if "flow" in self.cfg.modalities else row.n_frames

    @property
    def n_videos(self) -> int:
        return len(self.rows)

    @property
    def labels(self) -> np.ndarray:
        return np.array([r.label for r in self.rows])

    @property
    def video_ids(self) -> list[str]:
        return [r.id for r in self.rows]

    def __len__(self) -> int:
        return self.n_videos if self.mode == "train" else self.n_videos * self.cfg.test_clips

    def __getitem__(self, item) -> dict:
        """A sample; with ``skip_corrupt``, a clip that cannot be read as stored (checksum mismatch, counts
        that disagree with the shard) is ``{"corrupt": (video id, one-line reason)}``, which `collate_clips`
        leaves out of the batch and reports under ``batch["corrupt"]``."""
        index = item[0] if self.mode == "train" else int(item) // self.cfg.test_clips
        try:
            return self._get(item)
        except FormatError as err:
            if not self.cfg.skip_corrupt:
                raise
            return {"corrupt": (self.rows[index].id, str(err).splitlines()[0])}

    def _get(self, item) -> dict:
        if self.mode == "train":
            index, seed = item
            length = int(self.lengths[index])
            if self.cfg.clips_per_sample == 2:
                starts = pair_starts(length, self.cfg.frames, self.cfg.stride, np.random.default_rng(seed))
                return self.pair(index, *starts)
            start, clip = (
                train_start(length, self.cfg.frames, self.cfg.stride, np.random.default_rng(seed)),
                0,
            )
        else:
            index, clip = divmod(int(item), self.cfg.test_clips)
            length = int(self.lengths[index])
            start = int(eval_starts(length, self.cfg.frames, self.cfg.stride, self.cfg.test_clips)[clip])
        return self.sample(index, start, clip)

    def sample(self, index: int, start: int, clip: int = 0) -> dict:
        row = self.rows[index]
        frames = clip_indices(int(self.lengths[index]), start, self.cfg.frames, self.cfg.stride)
        out = self._read(row.id, self.cfg.modalities, frames)
        out.update(
            index=index,
            label=row.label,
            clip=clip,
            video=row.id,
            hw=torch.tensor(out[self.cfg.modalities[0]].shape[-2:], dtype=torch.int64),
        )
        return out

    def pair(self, index: int, start: int, start_1: int) -> dict:
        """Two clips of one video: ``sample(index, start)`` plus ``<modality>_1`` read from ``start_1``."""
        out = self.sample(index, start)
        frames = clip_indices(int(self.lengths[index]), start_1, self.cfg.frames, self.cfg.stride)
        out.update({f"{m}_1": x for m, x in self._read(out["video"], self.cfg.modalities, frames).items()})
        out.update(start=start, start_1=start_1)
        return out

    def _read(self, video: str, modalities: tuple[str, ...], frames: np.ndarray) -> dict[str, torch.Tensor]:
        """{modality: (C, T, H, W) uint8} as strided views: the collate's stack makes the one copy
        (``camera``: ``prev`` and ``camera``, module docstring)."""
        lo, hi = int(frames.min()), int(frames.max()) + 1
        images = [m for m in modalities if m in ("rgb", "res")]
        if "camera" in modalities:  # the frame before each clip frame is decoded with the clip
            before = np.maximum(frames - 1, 0)
            lo = min(lo, int(before.min()))
            images = images if "rgb" in images else ["rgb", *images]
        raw = self.store.read_clip(video, images, lo, hi - lo) if images else {}  # (n, H, W, 3) each
        if "flow" in modalities:
            raw["flow"] = self.store.flow(video, lo, hi - lo)  # (n, 2, H, W)
        out = {}
        for m in modalities:
            if m == "camera":
                out["prev"] = torch.from_numpy(_take(raw["rgb"], before - lo)).permute(3, 0, 1, 2)
                motion = self.store.camera(video)
                out["camera"] = torch.from_numpy(motion[frames])  # (T, 2, 3), a copy
                out["path"] = torch.from_numpy(camera_path(motion, frames))
                continue
            x = _take(raw[m], frames - lo)
            out[m] = (
                torch.from_numpy(x).permute(1, 0, 2, 3)
                if m == "flow"
                else torch.from_numpy(x).permute(3, 0, 1, 2)
            )
        return out


def camera_path(motion: np.ndarray, frames: np.ndarray) -> np.ndarray:
    """(T, 2, 3) float32: for each clip frame, the map from the clip's middle frame (``frames[T // 2]``) to it,
    composed from a video's ``motion`` (N, 2, 3: entry k maps frame k-1 to frame k) along the stored frames,
    so that strided and looping clips get the camera's true path."""
    lo, hi = int(frames.min()), int(frames.max())
    to_frame = np.empty((hi - lo + 1, 3, 3))  # the map from frame lo to frame lo + k
    to_frame[0] = np.eye(3)
    step = np.eye(3)
    for k in range(1, hi - lo + 1):
        step[:2] = motion[lo + k]
        to_frame[k] = step @ to_frame[k - 1]
    middle = np.linalg.inv(to_frame[frames[len(frames) // 2] - lo])
    return (to_frame[frames - lo] @ middle)[:, :2].astype(np.float32)


def _take(x: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """``x[positions]``: a view when the positions are consecutive (a clip), else a copy."""
    if len(positions) and not np.any(np.diff(positions) != 1):
        return x[positions[0] : positions[0] + len(positions)]
    return x[positions]


def collate_clips(samples: list[dict]) -> dict:
    """`default_collate`, after zero-padding (bottom, right) every clip ``(C, T, H, W)`` to the largest (H, W)
    of the batch when the samples' sizes differ; each sample's own size stays in ``hw`` (B, 2). Corrupt
    samples (``skip_corrupt``) are left out and listed under ``corrupt`` [(id, reason)]; a batch of only
    corrupt samples is ``{"corrupt": [...]}``."""
    corrupt = [s["corrupt"] for s in samples if "corrupt" in s]
    samples = [s for s in samples if "corrupt" not in s]
    if not samples:
        return {"corrupt": corrupt}
    batch = _collate(samples)
    if corrupt:
        batch["corrupt"] = corrupt
    return batch


class CorruptTally:
    """The corrupt clips a run left out (``--skip-corrupt``): each video said once when first met, counted."""

    def __init__(self) -> None:
        self.videos: dict[str, str] = {}  # id -> first reason
        self.clips = 0

    def add(self, batch: dict) -> bool:
        """Take ``batch["corrupt"]`` out of the batch; False when nothing of the batch is left to use."""
        for video, reason in batch.pop("corrupt", []):
            self.clips += 1
            if video not in self.videos:
                self.videos[video] = reason
                log.warning("skipping a corrupt clip of %s: %s", video, reason)
        return "index" in batch

    def summary(self) -> str:
        if not self.videos:
            return ""
        first = ", ".join(list(self.videos)[:5]) + (" ..." if len(self.videos) > 5 else "")
        return (
            f"{self.clips} clip(s) of {len(self.videos)} corrupt video(s) left out ({first}): "
            "`iic-prep check` names the damage, `iic-prep extract --repair` rewrites it"
        )


def _collate(samples: list[dict]) -> dict:
    sizes = {tuple(s["hw"].tolist()) for s in samples}
    if len(sizes) > 1:
        H, W = max(h for h, _ in sizes), max(w for _, w in sizes)
        samples = [
            {
                k: torch.nn.functional.pad(v, (0, W - v.shape[-1], 0, H - v.shape[-2]))
                if torch.is_tensor(v) and v.dim() == 4
                else v
                for k, v in s.items()
            }
            for s in samples
        ]
    return default_collate(samples)


def worker_errors(loader: Iterable) -> Iterator:
    """Iterate ``loader``; an error raised in a DataLoader worker comes out with its own one-line message.

    torch re-raises it in the main process as ``Caught FormatError in DataLoader worker process 0.``
    followed by the worker's traceback, so the one line a user sees would say nothing of the cause."""
    iterator = iter(loader)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except Exception as err:
            original = _worker_original(err)
            if original is None:
                raise
            raise original from None
        yield batch


def _worker_original(err: Exception) -> Exception | None:
    text = str(err)
    if "\nOriginal Traceback" not in text:
        return None
    last = [line for line in text.splitlines() if line.strip()][-1]
    head, sep, message = last.partition(": ")
    if not sep or not head.endswith(type(err).__name__):
        return None
    try:
        return type(err)(message)
    except Exception:
        return None


class EpochSampler(Sampler):
    """Yields ``(video, seed)`` for one epoch: a seeded permutation (same on every rank) of ``indices``
    (default: all ``n`` videos), split across ranks like DistributedSampler (padded by repeating so every
    rank gets the same count)."""

    def __init__(
        self,
        n: int,
        seed: int,
        shuffle: bool = True,
        rank: int = 0,
        world: int = 1,
        indices: np.ndarray | None = None,
    ) -> None:
        self.indices = np.arange(n) if indices is None else np.asarray(indices)
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.epoch = 0
        self.per_rank = -(-len(self.indices) // world)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = self.indices
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(order)
        order = np.resize(order, self.per_rank * self.world)[self.rank :: self.world]
        for i in order:
            yield int(i), clip_seed(self.seed, self.epoch, int(i))
