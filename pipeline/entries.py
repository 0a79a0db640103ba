"""What a split adapter (``datasets.py``, ``kinetics.py``) returns: the videos of a split as `VideoEntry`
rows of a `DatasetIndex`, or a `DatasetLayoutError`; shared by the adapters, which import it, not each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".webm", ".mov", ".mpg", ".mpeg", ".m4v")


class DatasetLayoutError(ValueError):
    """The root does not hold the documented layout (message is one line)."""


class DatasetOptionError(DatasetLayoutError):
    """Options that the chosen layout does not take, whatever the data (a split it does not have, Kinetics'
    options on another layout): a usage error, its one-line message names the option."""


@dataclass(frozen=True, slots=True)
class VideoEntry:
    """One video named by the split lists.

    ``id`` is the relative path without its suffix (``ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01``);
    ``splits`` maps split number -> ``"train"`` or ``"test"`` for every split that names the video
    (``"unlabelled"``: listed without a label, ``label`` -1; in neither list).
    """

    id: str
    path: str  # relative to the video folder
    class_name: str
    label: int  # 0-based
    splits: dict[int, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetIndex:
    """What an adapter found: the class names (label order) and the videos of the chosen split."""

    name: str
    video_root: Path
    classes: tuple[str, ...]
    entries: tuple[VideoEntry, ...]
