"""Split adapters: turn an official dataset layout into a list of `VideoEntry`.

Each adapter reads the dataset's own split files and never rebuilds a path from a file name: the path
written in the list is the truth (UCF101's folder `HandstandPushups` holds `v_HandStandPushups_*`).

Layouts (``root`` is the folder the official archives were unpacked into):

* ``ucf101``: ``UCF-101/<Class>/<video>.avi`` and ``ucfTrainTestlist/`` with ``classInd.txt``
  (``1 ApplyEyeMakeup``), ``trainlist0{1,2,3}.txt`` (``<Class>/<video>.avi <label>``) and
  ``testlist0{1,2,3}.txt`` (path only; the label comes from the class folder through classInd).
* ``hmdb51``: ``hmdb51/<class>/<video>.avi`` and ``testTrainMulti_7030_splits/<class>_test_split{1,2,3}.txt``
  with lines ``<video>.avi <n>`` (1 = train, 2 = test, 0 = unused).
* ``folder``: ``<root>/<class>/<video>`` with any common container; optional ``train.txt`` / ``test.txt``
  of relative paths; otherwise a deterministic split (see `folder_entries`).
* ``kinetics400`` / ``kinetics600`` / ``kinetics700``: the official annotation CSVs (see
  pipeline/kinetics.py); ``train`` -> the train list, ``validate`` -> the test list, ``test`` -> unlabelled
  videos (label -1).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from .entries import VIDEO_SUFFIXES, DatasetIndex, DatasetLayoutError, DatasetOptionError, VideoEntry
from .kinetics import kinetics_entries

KINETICS = ("kinetics400", "kinetics600", "kinetics700")  # one format, other files (pipeline/kinetics.py)
DATASETS = ("ucf101", "hmdb51", "folder", *KINETICS)
SPLITS = (1, 2, 3)


def _read_lines(path: Path) -> list[str]:
    """Lines of a split file without CRLF, trailing spaces or blank lines."""
    try:
        text = path.read_bytes().decode("utf-8", errors="replace")
    except OSError as err:
        raise DatasetLayoutError(f"cannot read split file {path}: {err.strerror}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def _require_dir(path: Path, what: str) -> None:
    if not path.is_dir():
        raise DatasetLayoutError(f"{what} not found: {path}")


def _strip_suffix(rel: str) -> str:
    p = Path(rel)
    return str(p.with_suffix("")) if p.suffix else rel


def ucf101_entries(root: Path, split: int) -> DatasetIndex:
    video_root, lists = root / "UCF-101", root / "ucfTrainTestlist"
    _require_dir(video_root, "UCF101 video folder")
    _require_dir(lists, "UCF101 split folder")
    classes: dict[str, int] = {}
    for line in _read_lines(lists / "classInd.txt"):
        num, name = line.split(maxsplit=1)
        classes[name] = int(num) - 1
    membership: dict[str, dict[int, str]] = {}
    for s in SPLITS:
        for kind in ("train", "test"):
            f = lists / f"{kind}list0{s}.txt"
            if not f.exists():
                if s == split:
                    raise DatasetLayoutError(f"split file missing: {f}")
                continue
            for line in _read_lines(f):
                rel = line.split()[0].replace("\\", "/")
                membership.setdefault(rel, {})[s] = kind
    entries = []
    for rel, splits in membership.items():
        if split not in splits:
            continue
        class_name = rel.split("/")[0]
        if class_name not in classes:
            raise DatasetLayoutError(f"class {class_name!r} of {rel} is not in classInd.txt")
        entries.append(VideoEntry(_strip_suffix(rel), rel, class_name, classes[class_name], splits))
    names = tuple(sorted(classes, key=classes.__getitem__))
    return DatasetIndex("ucf101", video_root, names, tuple(sorted(entries, key=lambda e: e.id)))


def hmdb51_entries(root: Path, split: int) -> DatasetIndex:
    video_root, lists = root / "hmdb51", root / "testTrainMulti_7030_splits"
    _require_dir(video_root, "HMDB51 video folder")
    _require_dir(lists, "HMDB51 split folder")
    suffix = f"_test_split{split}.txt"
    class_names = sorted(f.name[: -len(suffix)] for f in lists.glob(f"*{suffix}"))
    if not class_names:
        raise DatasetLayoutError(f"no *{suffix} files in {lists}")
    membership: dict[str, dict[int, str]] = {}
    for s in SPLITS:
        for cls in class_names:
            f = lists / f"{cls}_test_split{s}.txt"
            if not f.exists():
                continue
            for line in _read_lines(f):
                name, _, flag = line.rpartition(" ")
                kind = {"1": "train", "2": "test"}.get(flag.strip())
                if kind:
                    membership.setdefault(f"{cls}/{name.strip()}", {})[s] = kind
    labels = {c: i for i, c in enumerate(class_names)}
    entries = [
        VideoEntry(_strip_suffix(rel), rel, rel.split("/")[0], labels[rel.split("/")[0]], splits)
        for rel, splits in membership.items()
        if split in splits
    ]
    return DatasetIndex("hmdb51", video_root, tuple(class_names), tuple(sorted(entries, key=lambda e: e.id)))


def _stable_fraction(rel: str) -> float:
    """A number in [0, 1) from the path alone, so the split does not depend on what else is present."""
    return int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16) / 2**32


def folder_entries(root: Path, split: int, test_fraction: float = 0.3) -> DatasetIndex:
    """``<root>/<class>/<video>``; ``train.txt``/``test.txt`` (relative paths) when present, otherwise a
    video is in test when the SHA-1 of its relative path maps below ``test_fraction`` (0.3): deterministic,
    independent of the other files. Only split 1 exists."""
    if split != 1:
        raise DatasetOptionError("the folder layout has a single split: use --split 1")
    _require_dir(root, "video folder")
    videos = sorted(
        str(p.relative_to(root)).replace("\\", "/")
        for p in root.glob("*/*")
        if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES
    )
    if not videos:
        raise DatasetLayoutError(f"no videos found under {root}/<class>/")
    listed: dict[str, str] = {}
    for kind in ("train", "test"):
        f = root / f"{kind}.txt"
        if f.exists():
            for line in _read_lines(f):
                listed[line.split()[0].replace("\\", "/")] = kind
    if listed:
        membership = listed
    else:
        membership = {v: ("test" if _stable_fraction(v) < test_fraction else "train") for v in videos}
    class_names = sorted({rel.split("/")[0] for rel in list(membership) + videos})
    labels = {c: i for i, c in enumerate(class_names)}
    entries = [
        VideoEntry(_strip_suffix(rel), rel, rel.split("/")[0], labels[rel.split("/")[0]], {1: kind})
        for rel, kind in membership.items()
    ]
    return DatasetIndex("folder", root, tuple(class_names), tuple(sorted(entries, key=lambda e: e.id)))


def load_index(
    dataset: str, root: Path, split: int = 1, subset: Path | None = None, unlabelled: bool = False
) -> DatasetIndex:
    """The videos that split ``split``'s train and test lists name, sorted by id. ``subset`` (a class or
    video list) and ``unlabelled`` (also the unlabelled test CSV) exist for the Kinetics datasets only."""
    adapters = {"ucf101": ucf101_entries, "hmdb51": hmdb51_entries, "folder": folder_entries}
    if dataset not in adapters and dataset not in KINETICS:
        raise DatasetOptionError(f"unknown dataset {dataset!r}; choose one of {', '.join(DATASETS)}")
    if dataset not in KINETICS and (subset is not None or unlabelled):
        raise DatasetOptionError(f"--subset and --unlabelled apply to the Kinetics datasets, not {dataset}")
    if not Path(root).is_dir():
        raise DatasetLayoutError(f"dataset root not found: {root}")
    if dataset in KINETICS:
        return kinetics_entries(dataset, Path(root), split, subset, unlabelled)
    return adapters[dataset](Path(root), split)
