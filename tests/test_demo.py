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
    for run in ("demo-tiny", "demo-cmc-tiny", "demo-dualvar-tiny"):
        assert (tmp_path / "runs" / run / "final.pt").exists() and (
            tmp_path / "runs" / run / "curves.png"
        ).exists()
    # a second run reuses the data, the checkpoints and the cached features, and prints the same table
    second = CliRunner().invoke(main, args)
    assert second.exit_code == 0, second.output
    again = json.loads((tmp_path / "runs" / "demo.json").read_text())
    assert [r for r in again["rows"]] == report["rows"]
