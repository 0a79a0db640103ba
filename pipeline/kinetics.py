"""Kinetics-400/600/700 adapter: the official annotation CSVs and a downloaded video tree.

Layout (``root`` is the download folder)::

    <root>/kinetics400/{train,validate,test}.csv   (or the CSVs in <root> itself; ``val.csv`` is accepted)
    <root>/train/<name>.mp4            flat, or
    <root>/train/<label>/<name>.mp4    one folder per label (any spelling: files are found by name)
    <root>/validate/...                (or ``val/``), <root>/test/...

CSV columns ``label,youtube_id,time_start,time_end,split`` (``is_cc`` and other columns are ignored; the test
CSV has no label, or an empty one); a video is ``<youtube_id>_<time_start:06d>_<time_end:06d>`` with any
common video suffix. Each split folder is scanned once (``os.scandir``, one level of label folders), so
planning is linear in the number of files whichever layout the download uses. A listed video without a file
keeps its expected path: extraction records it as failed ("file not found"), it never stops the run.

How the lists map onto the project's split 1: ``train.csv`` -> the train list, ``validate.csv`` -> the test
list (the evaluation split, as in every Kinetics paper), ``test.csv`` -> ``unlabelled`` (label -1, empty
class; in neither list, so training, retrieval and recognition never see it; extracted only when asked for).
Label ids are the sorted label names (as the common loaders do) of the labelled videos kept.

A subset file (one entry a line, ``#`` comments) restricts the set: either class names (e.g. the 200 classes
of Mini-Kinetics-200; label ids are then the sorted listed classes, unlabelled videos are left out) or videos
(YouTube ids or ``<youtube_id>_<start>_<end>`` names; label ids from the labelled videos kept).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

from .entries import VIDEO_SUFFIXES, DatasetIndex, DatasetLayoutError, DatasetOptionError, VideoEntry

log = logging.getLogger(__name__)

# (canonical list name, accepted file / folder names, project list kind); shared dicts: 650k entries,
# 3 objects
LISTS = (
    ("train", ("train",), {1: "train"}),
    ("validate", ("validate", "val"), {1: "test"}),
    ("test", ("test",), {1: "unlabelled"}),
)
UNLABELLED = -1
REQUIRED = ("youtube_id", "time_start", "time_end")


def video_name(youtube_id: str, time_start: str, time_end: str) -> str:
    """``<youtube_id>_<time_start:06d>_<time_end:06d>`` (times may be written ``14`` or ``14.0``)."""
    return f"{youtube_id}_{int(float(time_start)):06d}_{int(float(time_end)):06d}"


def _find(candidates: list[Path], is_ok) -> Path | None:
    return next((p for p in candidates if is_ok(p)), None)


def annotation_dir(root: Path, dataset: str) -> Path:
    found = _find([root / dataset, root / "annotations", root], lambda p: (p / "train.csv").is_file())
    if found is None:
        raise DatasetLayoutError(
            f"no {dataset} annotations: expected {root / dataset / 'train.csv'} (or train.csv in {root})"
        )
    return found


def scan_split_folder(folder: Path, root: Path) -> tuple[dict[str, str], str]:
    """Video name (no suffix) -> path relative to ``root`` for every video file in ``folder`` or one label
    folder below it, and the layout found (``flat``, ``label folders``, ``mixed`` or ``empty``)."""
    found: dict[str, str] = {}
    prefix = folder.relative_to(root).as_posix()
    flat = labelled = 0
    with os.scandir(folder) as it:
        subdirs = []
        for e in it:
            if e.is_dir():
                subdirs.append(e.name)
            elif os.path.splitext(e.name)[1].lower() in VIDEO_SUFFIXES:
                found.setdefault(os.path.splitext(e.name)[0], f"{prefix}/{e.name}")
                flat += 1
    for sub in sorted(subdirs):
        with os.scandir(folder / sub) as it:
            for e in it:
                stem, suffix = os.path.splitext(e.name)
                if suffix.lower() in VIDEO_SUFFIXES and e.is_file():
                    found.setdefault(stem, f"{prefix}/{sub}/{e.name}")
                    labelled += 1
    layout = {(True, False): "flat", (False, True): "label folders", (True, True): "mixed"}.get(
        (flat > 0, labelled > 0), "empty"
    )
    return found, layout


def read_annotations(path: Path) -> list[tuple[str, str, str]]:
    """(label or "", youtube_id, video name) per CSV row."""
    try:
        f = open(path, newline="", encoding="utf-8")
    except OSError as err:
        raise DatasetLayoutError(f"cannot read {path}: {err.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        missing = [c for c in REQUIRED if c not in (reader.fieldnames or ())]
        if missing:
            raise DatasetLayoutError(
                f"{path} has no column {missing[0]!r} (columns: {', '.join(reader.fieldnames or [])})"
            )
        rows = []
        for n, r in enumerate(reader, start=2):
            try:
                name = video_name(r["youtube_id"].strip(), r["time_start"], r["time_end"])
            except (TypeError, ValueError):
                raise DatasetLayoutError(f"{path} line {n}: time_start/time_end are not numbers") from None
            rows.append(((r.get("label") or "").strip(), r["youtube_id"].strip(), name))
    return rows


def read_subset(path: Path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as err:
        raise DatasetLayoutError(f"cannot read subset list {path}: {err.strerror}") from None
    lines = [line.strip() for line in text.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def _restrict(rows: list[tuple], subset: Path) -> tuple[list[tuple], set[str] | None]:
    """Rows kept by the subset file, and the class set it names (None for a video list)."""
    wanted = read_subset(subset)
    labels = {r[0] for r in rows if r[0]}
    videos = {r[1] for r in rows} | {r[2] for r in rows}
    classes = [w for w in wanted if w in labels]
    listed = [w for w in wanted if w in videos]
    unknown = [w for w in wanted if w not in labels and w not in videos]
    if unknown:
        raise DatasetLayoutError(
            f"subset list {subset}: {len(unknown)} of {len(wanted)} entries are neither a label nor a "
            f"video of the annotations (first: {unknown[0]!r})"
        )
    if not wanted:
        raise DatasetLayoutError(f"subset list {subset} is empty")
    if classes and listed:
        raise DatasetLayoutError(
            f"subset list {subset} mixes labels ({classes[0]!r}) and videos ({listed[0]!r}): give one kind"
        )
    if classes:
        keep = set(classes)
        return [r for r in rows if r[0] in keep], keep
    keep = set(listed)
    return [r for r in rows if r[1] in keep or r[2] in keep], None


def kinetics_entries(
    dataset: str, root: Path, split: int, subset: Path | None = None, unlabelled: bool = False
) -> DatasetIndex:
    """Entries of train.csv (train list) and validate.csv (test list), plus test.csv as unlabelled videos
    when ``unlabelled``; ids are ``<list>/<video name>`` (``train/abc_000010_000020``) in either layout."""
    if split != 1:
        raise DatasetOptionError(f"{dataset} has a single split (train / validate): use --split 1")
    ann = annotation_dir(root, dataset)
    rows: list[tuple] = []  # label, youtube_id, name, list, splits, path
    for canon, names, splits in LISTS:
        if canon == "test" and not unlabelled:
            continue
        csv_path = _find([ann / f"{n}.csv" for n in names], Path.is_file)
        if csv_path is None:
            raise DatasetLayoutError(f"annotation file missing: {ann / f'{canon}.csv'}")
        folder = _find([base / n for base in dict.fromkeys((root, ann)) for n in names], Path.is_dir)
        if folder is None:
            raise DatasetLayoutError(
                f"{dataset} video folder not found: {root / canon} (for {csv_path.name})"
            )
        files, layout = scan_split_folder(folder, root)
        listed = read_annotations(csv_path)
        if canon == "test":
            listed = [("", yid, name) for _, yid, name in listed]  # a test label, where given, is not used
        elif any(not label for label, _, _ in listed):
            n = sum(1 for label, _, _ in listed if not label)
            raise DatasetLayoutError(f"{csv_path}: {n} rows have no label")
        found = sum(1 for _, _, name in listed if name in files)
        log.info("%s: %d listed, %d found, layout %s (%s)", csv_path.name, len(listed), found, layout, folder)
        prefix = folder.relative_to(root).as_posix()
        for label, yid, name in listed:
            expected = (
                f"{prefix}/{label}/{name}.mp4"
                if layout == "label folders" and label
                else f"{prefix}/{name}.mp4"
            )
            rows.append((label, yid, name, canon, splits, files.get(name, expected)))
    classes_listed = None
    if subset is not None:
        rows, classes_listed = _restrict(rows, subset)
    class_names = sorted(classes_listed if classes_listed is not None else {r[0] for r in rows if r[0]})
    labels = {c: i for i, c in enumerate(class_names)}
    entries: dict[str, VideoEntry] = {}
    for label, _, name, canon, splits, path in rows:
        vid = f"{canon}/{name}"
        if vid in entries:
            continue  # a CSV that lists a clip twice: the first row counts
        entries[vid] = VideoEntry(vid, path, label, labels[label] if label else UNLABELLED, splits)
    log.info(
        "%d videos, %d classes%s", len(entries), len(class_names), f" (subset {subset})" if subset else ""
    )
    if not entries:
        raise DatasetLayoutError(
            f"no videos listed in {ann}" + (f" after the subset {subset}" if subset else "")
        )
    ordered = tuple(entries[k] for k in sorted(entries))
    return DatasetIndex(dataset, Path(root), tuple(class_names), ordered)
