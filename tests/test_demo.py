"""`iic demo` end to end through the real CLI, at a small size: every row, each method's protocol, resume."""

from __future__ import annotations

import json

from click.testing import CliRunner

from iic.cli import main


def test_demo_small(tmp_path):
    args = [
        "demo",
        "--data-root",
        str(tmp_path),
        "--per-class",
        "4",
        "--frames",
        "32",
        "--epochs",
        "1",
        "--workers",
        "1",
        "--jobs",
        "2",
    ]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0, first.output + repr(first.exception)
    report = json.loads((tmp_path / "runs" / "demo.json").read_text())
    protocols = {row["name"]: row["protocol"] for row in report["rows"]}
    assert protocols == {
        "IIC (repeat)": "iic",
        "CMC baseline": "iic",
        "DualVar": "dualvar",
        "random init (dualvar protocol)": "dualvar",
        "random init (iic protocol)": "iic",
    }
    table = {
        line.split("  ")[0]: line
        for line in report["lines"]
        if line.startswith(("IIC", "CMC", "DualVar", "random"))
    }
    assert table["IIC (repeat)"].endswith("conv5") and table["DualVar"].endswith("pool, centred")
    # DualVar's paper retrieves with RGB input only: its residual cells are "-", IIC's are numbers
    assert [m for row in report["rows"] if row["name"] == "DualVar" for m in ("rgb", "res") if m in row] == [
        "rgb"
    ]
    assert table["DualVar"].split()[4:7] == ["-", "-", "-"] and "-" not in table["IIC (repeat)"].split()[2:8]
    assert "of 16 test videos against 16 train videos (8 classes: chance top-1 12.5%)" in first.output
    # the table names the machine and the kernels it ran with (pinned by the demo: reproduce.py)
    assert report["machine"]["cpu"] and set(report["machine"]["kernels"]) == {
        "ATEN_CPU_CAPABILITY",
        "ONEDNN_MAX_CPU_ISA",
        "MKL_CBWR",
    }
    assert "(not set)" not in report["machine"]["kernels"].values()
    # the data is the data root's dataset `synth`, where every default finds it; each stage and run is said
    assert json.loads((tmp_path / "synth" / "dataset.json").read_text())["dataset"] == "ucf101"
    progress = [line for line in first.stderr.splitlines() if line.startswith("demo: ")]
    assert (
        progress[0]
        == f"demo: preparing the synthetic dataset in {tmp_path / 'synth'} (generate, extract, flow)"
    )
    assert (
        "demo: training IIC (repeat), CMC baseline, DualVar, 2 at a time, one CPU thread each" in progress[2]
    )
    assert (
        sum(": trained and encoded in " in line for line in progress) == 3
        and progress[-1] == "demo: retrieval"
    )
    for run in ("demo-tiny", "demo-cmc-tiny", "demo-dualvar-tiny"):
        assert (tmp_path / "runs" / run / "final.pt").exists() and (
            tmp_path / "runs" / run / "curves.png"
        ).exists()
    # a second run reuses the data, the checkpoints and the cached features, and prints the same table
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "runs" / "demo.json").read_text())
    assert [r for r in again["rows"]] == report["rows"]


def test_demo_with_a_moving_camera_trains_on_stabilised_clips_beside_the_still_demo(tmp_path):
    """`iic demo --camera pan`: the camera stage runs, IIC and CMC train on the stabilised views and every
    IIC-protocol row is retrieved with res-stable beside rgb and res; its dataset, runs and report are
    named after the camera, so the still camera's demo in the same data root is another one."""
    args = ["demo", "--data-root", str(tmp_path), "--per-class", "3", "--frames", "24", "--epochs", "1"]
    first = CliRunner().invoke(main, [*args, "--workers", "1", "--jobs", "2", "--camera", "pan"])
    assert first.exit_code == 0, first.output + repr(first.exception)
    report = json.loads((tmp_path / "runs" / "demo-pan.json").read_text())
    inputs = {row["name"]: [m for m in ("rgb", "res", "res-stable") if m in row] for row in report["rows"]}
    assert inputs == {
        "IIC (repeat), stabilised": ["rgb", "res", "res-stable"],
        "CMC baseline, stabilised": ["rgb", "res", "res-stable"],
        "DualVar": ["rgb"],
        "random init (dualvar protocol)": ["rgb"],
        "random init (iic protocol)": ["rgb", "res", "res-stable"],
    }
    assert report["config"]["camera"] == "pan"
    assert json.loads((tmp_path / "synth-pan" / "dataset.json").read_text())["dataset"] == "ucf101"
    assert list((tmp_path / "synth-pan" / "camera").glob("shard-*.h5"))
    assert "(generate, extract, flow, camera)" in first.stderr.splitlines()[0]
    for run in ("demo-pan-tiny-stable", "demo-pan-cmc-tiny-stable", "demo-pan-dualvar-tiny"):
        assert (tmp_path / "runs" / run / "final.pt").exists()
    assert not (tmp_path / "synth").exists() and not (tmp_path / "runs" / "demo.json").exists()
    assert "rgb / res / res-stable input" in first.output
