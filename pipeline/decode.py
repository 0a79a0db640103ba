"""Decode a video with PyAV into resized uint8 RGB frames, with typed one-line failures.

Frames are counted by decoding (container headers lie: one UCF101 file claims 444 frames and holds 68);
a shortfall against the header is kept as a warning in the video's manifest ``reason``.
Colour conversion and scaling happen in one swscale call (``VideoFrame.reformat``), area interpolation,
which costs about as much as a separate cv2.resize but avoids a full-size copy.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np

log = logging.getLogger(__name__)


FILE_NOT_FOUND = "file not found"  # the reason of a listed video without a file (counted as missing)


def output_size(size: tuple[int, int] | int, height: int, width: int) -> tuple[int, int]:
    """(H, W) a ``height`` x ``width`` video is stored at: ``size`` itself when it is (H, W); for a short side
    ``s`` the shorter side becomes ``s`` and the other ``s * long / short`` rounded to the nearest even number
    (within one pixel of the source aspect ratio; even for 4:2:0 codecs)."""
    if not isinstance(size, int):
        return tuple(size)
    short, long = sorted((height, width))
    other = max(2, 2 * round(size * long / short / 2))
    return (size, other) if height <= width else (other, size)


class DecodeError(Exception):
    """A video that cannot be decoded; ``str(err)`` is a one-line reason for the manifest."""


def _one_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}".rstrip(": ")


def iter_frames(
    path: Path, size: tuple[int, int] | int | None = None, threads: int = 1, notes: list[str] | None = None
) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames of the first video stream, resized to ``size`` = (H, W), or to a
    short side ``size`` (int; see `output_size`, from the first frame's size), or not at all (None).

    Damage is appended to ``notes`` as one-line warnings, the video still kept: corrupt packets skipped,
    a stream that failed for good, fewer frames decoded than the container claims, errors the decoder
    reported (FFmpeg's log at ERROR level, captured per video and never printed). Raises `DecodeError` when
    the file cannot be opened or has no video stream.
    """
    notes = [] if notes is None else notes
    path = Path(path)
    if not path.exists():
        raise DecodeError(FILE_NOT_FOUND)
    if path.stat().st_size == 0:
        raise DecodeError("empty file (0 bytes)")
    av.logging.set_level(av.logging.ERROR)  # what a damaged stream looks like; captured below, never printed
    with av.logging.Capture(local=False) as logs:  # decoder threads log too
        try:
            container = av.open(str(path), mode="r")
        except (av.error.FFmpegError, OSError, UnicodeDecodeError) as err:
            raise DecodeError(f"cannot open: {_one_line(err)}") from None
        with container:
            if not container.streams.video:
                raise DecodeError("no video stream")
            stream = container.streams.video[0]
            stream.thread_type = "AUTO" if threads > 1 else "SLICE"
            stream.thread_count = max(1, threads)
            claimed, decoded, bad_packets = stream.frames, 0, 0
            target = size if size is None or not isinstance(size, int) else None
            try:
                for packet in container.demux(stream):
                    try:
                        frames = packet.decode()
                    except av.error.InvalidDataError:
                        bad_packets += 1
                        continue
                    for frame in frames:
                        decoded += 1
                        if (
                            target is None and size is not None
                        ):  # one size for the whole video, from its first frame
                            target = output_size(size, frame.height, frame.width)
                        yield _to_rgb(frame, *(target or (None, None)))
            except av.error.FFmpegError as err:
                notes.append(f"stream cut short: {_one_line(err)}")
    if bad_packets:
        notes.append(f"{bad_packets} corrupt packet(s) skipped")
    if decoded and 0 < decoded < claimed:
        notes.append(f"decoded {decoded} of the {claimed} frames the container claims")
    errors = [message.strip() for level, _, message in logs if level <= av.logging.ERROR and message.strip()]
    if decoded and errors:
        notes.append(f"decoder reported {len(errors)} error(s), first: {errors[0]}")


def _to_rgb(frame: av.VideoFrame, height: int | None, width: int | None) -> np.ndarray:
    if height is None:
        return frame.to_ndarray(format="rgb24")
    return frame.reformat(width=width, height=height, format="rgb24", interpolation="AREA").to_ndarray()
