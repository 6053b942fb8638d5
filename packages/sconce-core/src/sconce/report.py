"""The comparison report: one column per stage, one row per metric, ratios to the original.

Rendered as a terminal table (rich), JSON, Markdown and a PNG plot.

Example:
    >>> report = Report(
    ...     metrics=[MetricInfo("size", "Size", "MiB", False)],
    ...     stages=[StageResult("Original", values={"size": 4.0}),
    ...             StageResult("Quantized", technique="quant.int8", kind="quantize",
    ...                         values={"size": 1.0})])
    >>> print(report.to_markdown().splitlines()[2])
    | Size (MiB) | 4.000 | 1.000 (4.00x) |
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from sconce.plotting import COLOURS, new_figure, save_png

UNLIMITED_WIDTH = 100_000


def console(stderr: bool = False) -> Any:
    """A rich console; off a terminal (a pipe, a file, CI) it is wide enough that nothing is
    cut or wrapped.

    Example:
        >>> console().width >= 80
        True
    """
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else UNLIMITED_WIDTH)


KIND_TITLES = {"prune": "Pruned", "quantize": "Quantized", "sparsify": "Sparsified",
               "search": "Searched", "convert": "Converted"}
REPORT_VERSION = 1


@dataclass(frozen=True)
class MetricInfo:
    """How to show a metric: its label, unit, direction and formatting."""

    name: str
    label: str
    unit: str
    higher_is_better: bool
    digits: int = 3
    display_scale: float = 1.0
    display_unit: str | None = None

    @classmethod
    def of(cls, metric: Any, label: str | None = None) -> MetricInfo:
        """Describe a metric object (with the label it showed for this run)."""
        return cls(metric.name, label or metric.label or metric.name, metric.unit,
                   bool(metric.higher_is_better), int(getattr(metric, "digits", 3)),
                   float(getattr(metric, "display_scale", 1.0)),
                   getattr(metric, "display_unit", None))

    @property
    def heading(self) -> str:
        unit = self.display_unit if self.display_unit is not None else self.unit
        return f"{self.label} ({unit})" if unit else self.label

    def format(self, value: float | None) -> str:
        """The value as shown in tables ('n/a' when it was not measured)."""
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "n/a"
        return f"{value / self.display_scale:.{self.digits}f}"


@dataclass
class StageResult:
    """One column of the report.

    Attributes:
        title: column heading ("Original", "Pruned", ...).
        technique: the technique's name (None for the original model).
        kind: the technique's kind.
        config: the technique's config, as a dict.
        values: measured values by metric name (None where not measurable).
        notes: facts the technique recorded, plus why a metric is missing.
        seconds: wall time of the stage (technique + fine-tuning).
        artifacts: files the stage wrote (plots), relative to the output folder.
    """

    title: str
    technique: str | None = None
    kind: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    values: dict[str, float | None] = field(default_factory=dict)
    notes: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    artifacts: list[str] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StageResult:
        """Rebuild from :meth:`Report.to_dict` output."""
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in data.items() if k in known})


def stage_title(kind: str | None, existing: list[str]) -> str:
    """'Pruned', 'Quantized', ...; a repeated kind gets a number ('Pruned 2')."""
    base = KIND_TITLES.get(kind or "", "Stage")
    title, count = base, 1
    while title in existing:
        count += 1
        title = f"{base} {count}"
    return title


@dataclass
class Report:
    """Measured metrics for the original model and after every stage."""

    metrics: list[MetricInfo] = field(default_factory=list)
    stages: list[StageResult] = field(default_factory=list)
    run: dict[str, Any] = field(default_factory=dict)

    # --- values -------------------------------------------------------------------------------
    def value(self, stage: int | str, metric: str) -> float | None:
        """A measured value by stage index or title, and metric name."""
        chosen = self.stages[stage] if isinstance(stage, int) else next(
            s for s in self.stages if s.title == stage)
        return chosen.values.get(metric)

    def ratio_text(self, info: MetricInfo, stage: StageResult) -> str:
        """How the stage compares with the original: accuracy as a difference in points,
        costs (latency, size, MACs, params) as 'n x' smaller."""
        base = self.stages[0].values.get(info.name)
        value = stage.values.get(info.name)
        if base is None or value is None:
            return ""
        if info.unit == "%":
            return f"{value - base:+.{info.digits}f}"
        if info.higher_is_better or value <= 0 or base <= 0:
            return ""
        return f"{base / value:.2f}x"

    def cell(self, info: MetricInfo, index: int) -> str:
        """The text of one table cell."""
        stage = self.stages[index]
        text = info.format(stage.values.get(info.name))
        ratio = self.ratio_text(info, stage) if index > 0 else ""
        return f"{text} ({ratio})" if ratio else text

    def drop_inapplicable_metrics(self) -> None:
        """Leave out metrics that no stage has an entry for: they applied to none of the
        models (the spike rate of networks that do not spike). Metrics measured nowhere for
        a reason (an entry of None, with a note) stay.

        Example:
            >>> report = Report(metrics=[MetricInfo("a", "A", "", False)],
            ...                 stages=[StageResult("x")])
            >>> report.drop_inapplicable_metrics(); report.metrics
            []
        """
        self.metrics = [m for m in self.metrics
                        if any(m.name in stage.values for stage in self.stages)]

    # --- renderings ---------------------------------------------------------------------------
    def to_rich_table(self) -> Any:
        """A rich Table in the spirit of the original sconce comparison table."""
        from rich.table import Table

        table = Table(title="Comparison Table", show_lines=False)
        table.add_column("", justify="left", style="bold", overflow="fold")
        for stage in self.stages:
            heading = (stage.title if stage.technique is None
                       else f"{stage.title}\n{stage.technique}")
            table.add_column(heading, justify="right", overflow="fold")
        for info in self.metrics:
            table.add_row(info.heading, *(self.cell(info, i) for i in range(len(self.stages))))
        return table

    def print(self, out: Any = None) -> None:
        """Print the table and every note, whole, to ``out`` (a rich console; default
        :func:`console`): what ``sconce compress`` and the original API show."""
        out = out if out is not None else console()
        out.print(self.to_rich_table())
        for line in self.notes_lines():
            out.print(f"  {line}", highlight=False, markup=False)

    def notes_lines(self) -> list[str]:
        """Human-readable notes, whole: per-stage facts and unmeasurable metrics."""
        lines = []
        for stage in self.stages:
            for key, value in stage.notes.items():
                lines.append(f"{stage.title}: {key}: {value}")
        return lines

    def to_markdown(self) -> str:
        """A Markdown table plus the run's notes."""
        head = ["", *[s.title if s.technique is None else f"{s.title} ({s.technique})"
                      for s in self.stages]]
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for info in self.metrics:
            row = [info.heading, *(self.cell(info, i) for i in range(len(self.stages)))]
            lines.append("| " + " | ".join(row) + " |")
        notes = self.notes_lines()
        if self.run:
            lines += ["", "Run: " + ", ".join(f"{k}={v}" for k, v in self.run.items())]
        if notes:
            lines += ["", "Notes:", *[f"- {line}" for line in notes]]
        artifacts = [a for s in self.stages for a in s.artifacts]
        if artifacts:
            lines += ["", *[f"![{Path(a).stem}]({a})" for a in artifacts]]
        return "\n".join(lines) + "\n"

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict: metrics, stages (values, notes, config) and run info."""
        return {
            "version": REPORT_VERSION,
            "run": self.run,
            "metrics": [asdict(m) for m in self.metrics],
            "stages": [asdict(s) for s in self.stages],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Report:
        """Rebuild a report from :meth:`to_dict` output (``report.json``)."""
        return cls(
            metrics=[MetricInfo(**m) for m in data.get("metrics", [])],
            stages=[StageResult.from_dict(s) for s in data.get("stages", [])],
            run=dict(data.get("run", {})),
        )

    def plot(self, path: str | Path) -> Path:
        """Write a PNG with one bar chart per metric, stages side by side.

        Example:
            >>> report.plot("report.png")  # doctest: +SKIP
            PosixPath('report.png')
        """
        shown = [m for m in self.metrics if any(s.values.get(m.name) is not None
                                                for s in self.stages)]
        columns = min(3, max(1, len(shown)))
        rows = max(1, math.ceil(len(shown) / columns))
        figure = new_figure(4.2 * columns, 3.2 * rows)
        axes = figure.subplots(rows, columns, squeeze=False)
        titles = [s.title for s in self.stages]
        colours = [COLOURS[i % len(COLOURS)] for i in range(len(titles))]
        for axis, info in zip(axes.flat, shown, strict=False):
            values = [s.values.get(info.name) for s in self.stages]
            heights = [0.0 if v is None else v / info.display_scale for v in values]
            bars = axis.bar(titles, heights, color=colours)
            for bar, value in zip(bars, values, strict=True):
                axis.annotate(info.format(value), (bar.get_x() + bar.get_width() / 2,
                              bar.get_height()), ha="center", va="bottom", fontsize=8)
            axis.set_title(info.heading, fontsize=10)
            axis.tick_params(axis="x", labelsize=8)
        for axis in list(axes.flat)[len(shown):]:
            axis.set_visible(False)
        return save_png(figure, path)
