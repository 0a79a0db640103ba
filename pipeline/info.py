"""``iic-prep info`` and ``iic-prep check``: summarise and verify a processed dataset."""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

from .datasets import KINETICS
from .decode import FILE_NOT_FOUND
from .flow import stale_shards
from .format import FormatError, ManifestRow, damaged_items, slot_name, stage_shard
from .reader import VideoStore


def _stage_lines(name: str, rows: list[ManifestRow], folder: Path, unit: str) -> list[str]:
    ok = [r for r in rows if r.ok]
    n = np.array([r.n_frames for r in ok]) if ok else np.zeros(1, int)
    size = sum(p.stat().st_size for p in folder.rglob("shard-*.h5"))
    lines = [
        f"{name}: {len(rows)} videos, {len(ok)} ok, {len(rows) - len(ok)} failed; {int(n.sum())} {unit} "
        f"(per video min {n.min()}, median {int(np.median(n))}, max {n.max()}); "
        f"{len({r.shard for r in rows})} shards, {size / 2**20:.1f} MiB",
    ]
    reasons = collections.Counter(r.reason.split(":")[0] for r in rows if not r.ok)
    lines += [f"  failed ({count}): {reason}" for reason, count in reasons.most_common()]
    warned = [r for r in ok if r.reason]
    if warned:  # kept, but damaged: the decoder's notes (pipeline/decode.py), counted by kind
        kinds = collections.Counter(_kind(note) for r in warned for note in r.reason.split("; "))
        lines.append(f"  ok with warnings: {len(warned)} videos")
        lines += [f"    {kind} ({count})" for kind, count in kinds.most_common()]
    return lines


def _kind(note: str) -> str:
    """A warning without its numbers and details: 'decoded 19 of the 48 frames ...' -> 'decoded N of the N
    ...'."""
    return re.sub(r"\d+", "N", note.split(":")[0]).removesuffix(", first")


LIST_KINDS = ("train", "test", "unlabelled")
KINETICS_LISTS = {
    "train": "train",
    "test": "validate",
    "unlabelled": "test (unlabelled)",
}  # csv behind each list


def list_lines(rows: list[ManifestRow], split: int, names: dict[str, str]) -> list[str]:
    """Per list of ``split``: listed, ok, missing (no file) and broken (a file that does not decode), with
    shares: several percent of a Kinetics download is normally missing."""
    lines = []
    for kind in LIST_KINDS:
        listed = [r for r in rows if r.in_list(split, kind)]
        if not listed:
            continue
        missing = sum(1 for r in listed if not r.ok and r.reason == FILE_NOT_FOUND)
        broken = sum(1 for r in listed if not r.ok) - missing
        n = len(listed)
        lines.append(
            f"  split {split} {names.get(kind, kind)}: {n} listed, {n - missing - broken} ok, "
            f"{missing} missing ({100 * missing / n:.1f}%), {broken} broken ({100 * broken / n:.1f}%)"
        )
    return lines


@dataclass
class InfoReport:
    lines: list[str]  # the summary
    warnings: list[str]  # what is wrong with the data, in `check`'s words (flow computed from older frames)


def info_report(data_dir: Path) -> InfoReport:
    """The summary of a processed dataset and the warnings about it (`stale_flow`)."""
    lines = dataset_info(data_dir)
    has_flow = (Path(data_dir) / "flow" / "manifest.csv").exists()
    return InfoReport(lines, stale_flow(data_dir) if has_flow else [])


def stale_flow(data_dir: Path) -> list[str]:
    """One line per flow shard computed from other frames than the stored ones (the frames shard was
    re-extracted since): `iic-prep check` reports them as problems, `iic-prep info` as warnings."""
    return [
        f"{shard}: computed from other frames than {stage_shard(shard, 'frames')} (re-extracted since): "
        "re-run `iic-prep flow`"
        for shard in stale_shards(data_dir)
    ]


def dataset_info(data_dir: Path) -> list[str]:
    store = VideoStore(data_dir)
    meta = store.meta
    size = (
        f"{store.size[0]}x{store.size[1]} (HxW)"
        if store.size
        else f"short side {store.short_side} (aspect kept)"
    )
    lines = [
        f"{data_dir}: {meta['dataset']} split {meta['split']}, {len(store.classes)} classes, "
        f"frames {size} {meta['codec']} q{meta['quality']}",
    ]
    for split in (1, 2, 3):
        train, test = store.ok_rows(split, "train"), store.ok_rows(split, "test")
        unlabelled = store.ok_rows(split, "unlabelled")
        if train or test:
            lines.append(
                f"  split {split}: {len(train)} train, {len(test)} test videos (ok)"
                + (f", {len(unlabelled)} unlabelled" if unlabelled else "")
            )
    lines += _stage_lines("frames", store.rows, data_dir / "frames", "frames")
    names = KINETICS_LISTS if meta["dataset"] in KINETICS else {}
    for split in (1, 2, 3):
        lines += list_lines(store.rows, split, names)
    if store.has_flow:
        fm = store.flow_meta
        lines += _stage_lines(
            f"flow ({fm['method']}, bound {fm['bound']})",
            list(store.flow_rows.values()),
            data_dir / "flow",
            "pairs",
        )
    return lines


@dataclass
class CheckReport:
    problems: list[str] = field(default_factory=list)  # one line each; empty = consistent
    videos: collections.Counter = field(default_factory=collections.Counter)  # stage -> videos looked at
    unverified: collections.Counter = field(
        default_factory=collections.Counter
    )  # stage -> ... without checksums

    def notes(self) -> list[str]:
        """What the check could not verify: videos of shards written before checksums existed."""
        return [
            f"{stage}: no checksums for {n} of {self.videos[stage]} videos (shards written before checksums: "
            f"bytes not verified; `iic-prep {'extract' if stage == 'frames' else 'flow'} --overwrite` "
            "adds them)"
            for stage, n in sorted(self.unverified.items())
            if n
        ]


def check(data_dir: Path) -> list[str]:
    """Every problem found, one line each (empty = the dataset is consistent)."""
    return check_report(data_dir).problems


def check_report(data_dir: Path) -> CheckReport:
    """Open every shard, verify counts against the manifest and the CRC32 of every stored frame, residual and
    flow pair (when the shard has checksums), decode samples."""
    report = CheckReport()
    try:
        store = VideoStore(data_dir)
    except FormatError as err:
        report.problems.append(str(err))
        return report
    problems = report.problems
    problems += _check_stage(store, store.rows, data_dir, True, report)
    if store.has_flow:
        problems += _check_stage(store, list(store.flow_rows.values()), data_dir, False, report)
        problems += stale_flow(data_dir)
        for r in store.rows:
            fr = store.flow_rows.get(r.id)
            if r.ok and fr is not None and fr.ok and fr.n_frames != r.n_frames - 1:
                problems.append(f"{r.id}: {fr.n_frames} flow pairs for {r.n_frames} frames (expected N-1)")
        missing = [r.id for r in store.rows if r.ok and r.n_frames >= 2 and r.id not in store.flow_rows]
        if missing:
            problems.append(
                f"{len(missing)} extracted videos have no flow row (e.g. {missing[0]}): "
                "re-run `iic-prep flow`"
            )
    store.close()
    return report


def _check_stage(
    store: VideoStore, rows: list[ManifestRow], data_dir: Path, frames: bool, report: CheckReport
) -> list[str]:
    problems = []
    by_shard: dict[str, list[ManifestRow]] = collections.defaultdict(list)
    for r in rows:
        by_shard[r.shard].append(r)
    for shard, shard_rows in sorted(by_shard.items()):
        path = data_dir / shard
        try:
            f = h5py.File(path, "r")
        except OSError as err:
            problems.append(f"{shard}: cannot open ({err})")
            continue
        with f:
            before = len(problems)
            for r in shard_rows:
                if not r.ok:
                    continue
                name = slot_name(r.slot)
                if name not in f:
                    problems.append(f"{r.id}: missing from {shard}")
                    continue
                problems += _check_video(store, f[name], r, frames, report)
            stored = f.attrs.get("content_digest")
            if (
                len(problems) == before
                and stored is not None
                and stored != store.digest_from_videos(shard, [r for r in shard_rows if r.ok])
            ):
                problems.append(
                    f"{shard}: its content_digest does not match its videos' offsets and checksums (the "
                    f"shard changed after it was written, and the data identity would not see it): "
                    f"`iic-prep {'extract' if frames else 'flow'} --overwrite` rewrites it"
                )
    return problems


def _check_video(
    store: VideoStore, group: h5py.Group, r: ManifestRow, frames: bool, report: CheckReport
) -> list[str]:
    stage = "frames" if frames else "flow"
    report.videos[stage] += 1
    try:
        h, w = store.frame_size(r.id)
        if store.short_side is not None and min(h, w) != store.short_side:
            return [f"{r.id}: frames are {h}x{w}, the short side should be {store.short_side}"]
        if frames:
            streams = ["rgb"] + (["res"] if "res" in group else [])  # residuals are derived when not stored
            for m in streams:
                n = len(group[f"{m}_offsets"]) - 1
                if n != r.n_frames:
                    return [f"{r.id}: {m} holds {n} frames, manifest says {r.n_frames}"]
            damage = {m: damaged_items(group, m) for m in streams}
            report.unverified[stage] += any(bad is None for bad in damage.values())
            corrupt = [
                f"{r.id}: {m} {_positions('frame', bad)} of {r.shard}: checksum mismatch (corrupt bytes)"
                for m, bad in damage.items()
                if bad
            ]
            if corrupt:
                return corrupt
            for t in sorted({0, r.n_frames // 2, r.n_frames - 1}):
                for m in ("rgb", "res"):
                    x = store.read(r.id, m, t, 1)
                    if x.shape != (1, h, w, 3):
                        return [f"{r.id}: {m} frame {t} decodes to {x.shape[1:]}, expected {(h, w, 3)}"]
        else:
            shape = group["flow"].shape
            if shape != (r.n_frames, 2, h, w):
                return [f"{r.id}: flow is {shape}, expected {(r.n_frames, 2, h, w)}"]
            bad = damaged_items(group, "flow")
            if bad:
                return [
                    f"{r.id}: flow {_positions('pair', bad)} of {r.shard}: checksum mismatch (corrupt bytes)"
                ]
            report.unverified[stage] += bad is None
            store.flow(r.id, r.n_frames - 1, 1)
    except (OSError, KeyError, ValueError, IndexError, FormatError) as err:
        return [
            f"{r.id}: {stage} of {r.shard} unreadable "
            f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
        ]
    return []


def _positions(unit: str, positions: list[int], n: int = 6) -> str:
    """``frame 3`` / ``frames 0, 1, 2 (+15 more)``."""
    shown = ", ".join(map(str, positions[:n])) + (
        f" (+{len(positions) - n} more)" if len(positions) > n else ""
    )
    return f"{unit}{'s' if len(positions) > 1 else ''} {shown}"
