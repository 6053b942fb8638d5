"""Report renderings and atomic writes."""

from __future__ import annotations

import json
import os

import pytest

from sconce.report import MetricInfo, Report, StageResult, stage_title
from sconce.storage import atomic_write_json, atomic_write_text, replace_dir, staging_dir


def _report() -> Report:
    return Report(
        metrics=[MetricInfo("accuracy", "Accuracy", "%", True, 2),
                 MetricInfo("latency", "Latency b=1", "ms/sample", False),
                 MetricInfo("params", "Params", "params", False, 2, 1e6, "M"),
                 MetricInfo("macs", "MACs", "MACs", False, 2, 1e6, "M")],
        stages=[StageResult("Original", values={"accuracy": 93.136, "latency": 6.4,
                                                "params": 9.23e6, "macs": 606e6}),
                StageResult("Pruned", technique="prune.channel", kind="prune",
                            values={"accuracy": 90.451, "latency": 4.7, "params": 5.36e6,
                                    "macs": None},
                            notes={"macs not measured": "torchprofile cannot trace"})],
        run={"threads": 2})


def test_cells_show_ratios_and_accuracy_deltas() -> None:
    report = _report()
    assert report.cell(report.metrics[0], 1) == "90.45 (-2.69)"
    assert report.cell(report.metrics[1], 1) == "4.700 (1.36x)"
    assert report.cell(report.metrics[2], 0) == "9.23"
    assert report.cell(report.metrics[3], 1) == "n/a"


def test_markdown_json_round_trip_and_plot(tmp_path) -> None:
    report = _report()
    markdown = report.to_markdown()
    assert "| Latency b=1 (ms/sample) | 6.400 | 4.700 (1.36x) |" in markdown
    assert "Pruned: macs not measured: torchprofile cannot trace" in markdown
    again = Report.from_dict(json.loads(json.dumps(report.to_dict())))
    assert again.to_markdown() == markdown
    path = report.plot(tmp_path / "report.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_rich_table_has_one_column_per_stage() -> None:
    table = _report().to_rich_table()
    assert len(table.columns) == 3 and table.row_count == 4


def test_stage_titles_number_repeats() -> None:
    assert stage_title("prune", ["Original"]) == "Pruned"
    assert stage_title("prune", ["Original", "Pruned"]) == "Pruned 2"
    assert stage_title("quantize", []) == "Quantized"


def test_atomic_write_leaves_the_old_file_on_failure(tmp_path) -> None:
    path = tmp_path / "report.json"
    atomic_write_text(path, "old")
    with pytest.raises(TypeError):
        atomic_write_json(path, {"bad": object()})
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["report.json"]


def test_replace_dir_swaps_complete_folders(tmp_path) -> None:
    final = tmp_path / "stage"
    for content in ("first", "second"):
        staging = staging_dir(final)
        (staging / "file.txt").write_text(content)
        replace_dir(staging, final)
    assert (final / "file.txt").read_text() == "second"
    assert sorted(os.listdir(tmp_path)) == ["stage"]
