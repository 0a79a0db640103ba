"""Run logging (rank 0 only): per-step JSONL metrics, optional TensorBoard, and the curves PNG.

TensorBoard is used when the ``tensorboard`` package is installed (it is optional: ``pip install
iic[tensorboard]``); matplotlib draws the loss and learning-rate curves at the end of a run.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..evaluation.monitor import SAME_FEATURES, SIMILARITY, TOP1

log = logging.getLogger(__name__)


def ensure_finite(loss, where: str, error: type[Exception]) -> None:
    """Stop a training loop at a loss that is NaN or infinite, in one line (the last good checkpoint
    stays)."""
    value = float(loss.detach() if hasattr(loss, "detach") else loss)
    if value != value or value in (float("inf"), float("-inf")):
        raise error(f"loss is {value} at {where}; stopped, last good checkpoint kept (try a lower --lr)")


class Meter:
    """Running average of the loss and the share of wall time spent waiting for data (MoCo's AverageMeter
    idea). The loss is summed where it was computed (float64) and read only when asked: on a GPU, reading it
    every step would make the host wait for the device every step."""

    def __init__(self, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self.loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self.n = self.data_time = self.step_time = 0.0
        self.clips = 0

    def update(self, loss: torch.Tensor | float, clips: int, data_time: float, step_time: float) -> None:
        self.loss_sum += loss
        self.n += 1
        self.clips += clips
        self.data_time += data_time
        self.step_time += step_time

    @property
    def loss(self) -> float:
        return self.loss_sum.item() / max(self.n, 1)

    @property
    def clips_per_s(self) -> float:
        return self.clips / max(self.data_time + self.step_time, 1e-9)

    @property
    def data_share(self) -> float:
        return self.data_time / max(self.data_time + self.step_time, 1e-9)


class RunLog:
    """Appends metrics to ``metrics.jsonl`` (and TensorBoard events when available) in ``out``."""

    def __init__(self, out: Path, enabled: bool = True) -> None:
        self.out, self.enabled = Path(out), enabled
        self.tb = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.jsonl = open(self.out / "metrics.jsonl", "a", encoding="utf-8")
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.out / "tb"))
        except ImportError:
            log.info("tensorboard not installed: metrics go to metrics.jsonl only")

    def write(self, step: int, **metrics: float) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, "time": round(time.time(), 3), **metrics}) + "\n")
        self.jsonl.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self.enabled:
            self.jsonl.close()
            if self.tb is not None:
                self.tb.close()


def read_metrics(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def draw_curves(metrics: list[dict], title: str, chance_top1: float | None = None):
    """The matplotlib figure of `plot_curves` from metrics rows; ``title`` is the figure's title."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = {r["step"]: r for r in metrics if "loss" in r}
    steps = sorted(rows)
    chance = [r["chance_loss"] for r in metrics if "chance_loss" in r]
    monitor = {r["epoch"]: r for r in metrics if any(k.startswith(TOP1) for k in r)}
    similar = any(k.startswith(SIMILARITY) for r in monitor.values() for k in r)
    panels = 2 + bool(monitor) + similar
    fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.8))
    ax1, ax2 = axes[0], axes[1]
    ax1.plot(steps, [rows[s]["loss"] for s in steps], label="loss")
    if chance:
        ax1.axhline(chance[-1], color="tab:red", ls="--", lw=1, label=f"chance {chance[-1]:.2f}")
        ax1.legend(loc="upper right", fontsize=8)
    ax1.set(xlabel="step", ylabel="loss", title="training loss")
    ax2.plot(steps, [rows[s]["lr"] for s in steps], color="tab:orange")
    ax2.set(xlabel="step", ylabel="learning rate", yscale="log", title="learning rate")
    if monitor:
        chance_line = (chance_top1, f"chance {chance_top1:.1f}") if chance_top1 is not None else None
        _monitor_panel(axes[2], monitor, TOP1, " input", "test top-1 (%)", "retrieval top-1", chance_line)
    if similar:  # near 1: every test video encoded alike (model/evaluation/monitor.py)
        alike = (SAME_FEATURES, f"alike above {SAME_FEATURES:g}")
        _monitor_panel(
            axes[3], monitor, SIMILARITY, "", "mean cosine between test videos", "feature similarity", alike
        )
    fig.suptitle(title, fontsize=12)
    fig.tight_layout()
    return fig


def _monitor_panel(ax, monitor: dict, prefix: str, suffix: str, ylabel: str, title: str, line) -> None:
    """One line per view of the monitor's ``prefix`` scores against epoch (labelled view + ``suffix``), and
    the dashed reference ``line`` (value, label) when there is one."""
    epochs = sorted(monitor)
    for key in sorted({k for r in monitor.values() for k in r if k.startswith(prefix)}):
        ax.plot(epochs, [monitor[e].get(key) for e in epochs], marker="o", label=key[len(prefix) :] + suffix)
    if line is not None:
        ax.axhline(line[0], color="tab:red", ls="--", lw=1, label=line[1])
    ax.set(xlabel="epoch (0 = untrained)", ylabel=ylabel, title=f"monitor: {title}")
    ax.legend(fontsize=8)


def plot_curves(metrics_path: Path, png: Path, title: str = "", chance_top1: float | None = None) -> Path:
    """Loss (with its chance value, when logged), learning rate, the monitor's test top-1 and its feature
    similarity against step, from metrics.jsonl (the last value wins for a step that a resumed run logged
    twice). The figure's title is ``title`` (callers name the run and its views), else the run folder's
    name."""
    fig = draw_curves(
        read_metrics(metrics_path), title or f"run {Path(metrics_path).parent.name}", chance_top1
    )
    import matplotlib.pyplot as plt

    fig.savefig(png, dpi=100, format="png")
    plt.close(fig)
    return png
