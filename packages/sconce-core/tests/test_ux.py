"""The user's experience: interleaved timing, progress lines, uncut output, a light start-up."""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import sconce
from sconce.metrics import standard, timing
from sconce.metrics.timing import TimingSettings, time_interleaved
from sconce.progress import progress_line, set_progress, track
from sconce.report import MetricInfo, Report, StageResult

FAST = TimingSettings(threads=1, rounds=3, max_rounds=6, round_seconds=0.005,
                      warmup_seconds=0.005, min_calls=2)


class Halve(sconce.Technique):
    """Zero half of each weight (a prune stage without structural change)."""

    name, kind, Config = "ux.halve", "prune", sconce.PruneConfig

    def apply(self, model, config, ctx):
        for weight in (p for p in model.parameters() if p.dim() > 1):
            weight.data[weight.abs() <= weight.abs().flatten().median()] = 0
        return model


def test_calls_are_interleaved_round_by_round_and_first_calls_excluded(monkeypatch) -> None:
    order: list[str] = []
    first = {"a": True, "b": True}
    timing_now = {"inside": False}
    first_call_timed: list[bool] = []

    def make(name: str):
        def call() -> None:
            if first[name]:  # a first-call initialisation (oneDNN primitives, a session)
                first[name] = False
                first_call_timed.append(timing_now["inside"])
            order.append(name)
        return call

    real_round = timing._round

    def watched(call, synchronize, settings, seconds=None):  # a timed round, or a warm-up's
        timing_now["inside"] = True
        try:
            return real_round(call, synchronize, settings, seconds)
        finally:
            timing_now["inside"] = False

    monkeypatch.setattr(timing, "_round", watched)
    timed = time_interleaved([make("a"), make("b")], torch.device("cpu"), FAST)
    assert first_call_timed == [False, False]  # each first call ran outside every timed round
    switches = sum(1 for x, y in itertools.pairwise(order) if x != y)
    assert switches >= 2 * FAST.rounds - 1  # a b a b ..., not a a a ... b b b
    assert timed[0].ratio == 1.0  # every round kept or measured again:
    assert len(timed[1].rounds) + timed[1].remeasured >= FAST.rounds


def test_a_disturbed_round_is_measured_again(monkeypatch) -> None:
    def steady() -> None:
        time.sleep(0.001)

    def disturbed() -> None:
        time.sleep(0.001)

    real, timed_rounds = timing._round, []

    def burst(call, synchronize, settings, seconds=None):  # load lands on one timed round
        value = real(call, synchronize, settings, seconds)
        if call is disturbed and seconds is None:
            timed_rounds.append(value)
            if len(timed_rounds) == 2:
                return 20 * value
        return value

    monkeypatch.setattr(timing, "_round", burst)
    timed = time_interleaved([steady, disturbed], torch.device("cpu"), FAST)
    assert timed[1].remeasured >= 1  # (a loaded machine may disturb more rounds itself)
    assert max(timed[1].rounds) < 1e4 * min(timed_rounds)  # ms vs s: the 20x round is gone
    assert "disturbed round(s) measured again" in timed[1].describe()


def test_figures_never_rest_on_one_or_two_lucky_rounds() -> None:
    steady = [[1.0, 1.0]] * 5
    assert timing._least_disturbed([*steady, [1.0, 20.0]], 1.3, 5) == steady  # burst left out
    noisy = [[1.0, 1.0], [1.0, 3.0], [1.0, 0.3], [1.0, 1.1], [1.0, 2.0], [1.0, 0.5]]
    kept = timing._least_disturbed(noisy, 1.3, 5)  # only 2 rounds within 1.3x of typical
    assert len(kept) == 5 and [1.0, 0.3] not in kept  # the 5 that stray least


def _recording(monkeypatch) -> list[int]:
    counts: list[int] = []
    real = standard.time_interleaved

    def record(calls, device, settings):
        counts.append(len(calls))
        return real(calls, device, FAST)

    monkeypatch.setattr(standard, "time_interleaved", record)
    return counts


def test_compress_times_every_stage_together_at_the_end(tiny, data, monkeypatch) -> None:
    sconce.register_plugin(type("P", (), {"sconce_register_techniques": staticmethod(
        sconce.hookimpl(lambda register: register(Halve())))})(), name="ux")
    counts = _recording(monkeypatch)
    result = sconce.compress(tiny, data, recipe=["ux.halve", "ux.halve"], finetune_epochs=0,
                             metrics=["latency", "params"], progress=False)
    assert counts == [3]  # one interleaved measurement of Original + both stages
    assert all(s.values["latency"] > 0 for s in result.report.stages)
    assert "vs original" in " ".join(result.report.notes_lines())
    assert "interleaved" in result.report.run["timing"]


def test_measure_compares_several_models_together(monkeypatch) -> None:
    counts = _recording(monkeypatch)
    values = sconce.measure({"a": nn.Linear(32, 32), "b": nn.Linear(32, 4)},
                            example_inputs=torch.randn(1, 32), metrics=["latency", "params"])
    assert counts == [2] and set(values) == {"a", "b"}
    assert values["b"]["params"] == 132.0 and values["b"]["latency"] > 0


def test_progress_logs_lines_off_a_terminal(caplog, monkeypatch) -> None:
    monkeypatch.delenv("SCONCE_NO_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="sconce.progress"):
        assert list(track(range(3), description="scan", every=0.0)) == [0, 1, 2]
    assert "scan: 3/3 (100%)" in caplog.text and "ETA" in caplog.text
    assert progress_line("epoch 1/2", 1, 4, 3.0) == "epoch 1/2: 1/4 (25%), elapsed 0:03, ETA 0:09"


def test_progress_is_silenced(caplog, monkeypatch) -> None:
    monkeypatch.delenv("SCONCE_NO_PROGRESS", raising=False)
    set_progress(False)
    try:
        with caplog.at_level(logging.INFO, logger="sconce.progress"):
            list(track(range(3), description="scan", every=0.0))
    finally:
        set_progress(True)
    assert "scan" not in caplog.text


def test_training_reports_each_epoch(tiny, data, caplog, monkeypatch) -> None:
    monkeypatch.delenv("SCONCE_NO_PROGRESS", raising=False)
    with caplog.at_level(logging.INFO, logger="sconce"):
        sconce.train(tiny, data, epochs=1)
    assert "training epoch 1/1: loss" in caplog.text


LONG_NOTE = "a note that is much longer than any terminal " * 8


def test_non_terminal_output_is_never_cut(capsys) -> None:
    report = Report(metrics=[MetricInfo("size", "Size", "MiB", False)],
                    stages=[StageResult("Original", values={"size": 4.0}, notes={"x": LONG_NOTE})])
    assert LONG_NOTE in report.to_markdown() and "..." not in report.to_markdown()
    from sconce.cli import _console

    _console().print(report.to_rich_table())
    for line in report.notes_lines():
        _console().print(line)
    printed = capsys.readouterr().out
    assert LONG_NOTE.strip() in printed and "…" not in printed
    for command in (["techniques"], ["plugins"]):
        out = CliRunner().invoke(sconce.cli.cli, command).output  # type: ignore[attr-defined]
        assert out and "…" not in out


def test_listing_commands_do_not_import_torch(tmp_path) -> None:
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "SCONCE_NO_PROGRESS": "1"}
    env.pop("SCONCE_NO_MANIFEST", None)
    probe = ("import sys; from sconce.cli import main; code = main({argv}); "
             "print(code, 'torch' in sys.modules)")
    first = subprocess.run([sys.executable, "-c", probe.format(argv=["models"])],
                           capture_output=True, text=True, env=env)
    assert first.stdout.split()[-2:] == ["0", "True"]  # the manifest is built once
    for argv in (["models"], ["techniques"], ["--help"], ["datasets"]):
        again = subprocess.run([sys.executable, "-c", probe.format(argv=argv)],
                               capture_output=True, text=True, env=env)
        assert again.stdout.split()[-2:] == ["0", "False"], (argv, again.stderr)
    listed = json.loads(subprocess.run(
        [sys.executable, "-m", "sconce.cli", "techniques", "--json"], capture_output=True,
        text=True, env=env).stdout)
    assert isinstance(listed, list)


def test_import_sconce_is_light() -> None:
    result = subprocess.run([sys.executable, "-c", "import sys, sconce; "
                             "print('torch' in sys.modules, callable(sconce.compress))"],
                            capture_output=True, text=True)
    assert result.stdout.split() == ["False", "True"]


@pytest.mark.parametrize("level", ["warning", "info"])
def test_set_verbosity(level) -> None:
    sconce.set_verbosity(level)
    assert logging.getLogger("sconce").level == logging.getLevelName(level.upper())
    sconce.set_verbosity("info")


class MarkQuantized(sconce.Technique):
    """A quantize stage whose model a counting metric cannot read."""

    name, kind, Config = "ux.mark", "quantize", sconce.QuantizeConfig

    def apply(self, model, config, ctx):
        model.marked = True
        return model


class CountOps(sconce.Metric):
    name, label, unit = "ops", "Ops", ""
    kept_by_kinds = ("quantize",)

    def measure(self, model, ctx):
        if getattr(model, "marked", False):
            raise sconce.MetricUnavailable("the counter cannot trace this graph")
        return 7.0


def test_a_count_quantization_keeps_is_carried_with_its_reason(tiny, data) -> None:
    sconce.register_plugin(type("P", (), {"sconce_register_techniques": staticmethod(
        sconce.hookimpl(lambda register: register(MarkQuantized())))})(), name="ux-mark")
    result = sconce.compress(tiny, data, recipe=["ux.mark"], finetune_epochs=0,
                             metrics=[CountOps()], progress=False)
    quantized = result.report.stages[1]
    assert quantized.values["ops"] == 7.0
    assert "carried from Original" in quantized.notes["ops"]
    assert "cannot trace" in quantized.notes["ops"] and "ops not measured" not in quantized.notes


def test_notes_are_printed_as_written_not_as_markup() -> None:
    """A note's square brackets (a pip extra) are text, not rich markup to strip."""
    import io

    from rich.console import Console

    note = "torchao is not installed; pip install 'sconce-quant[pt2e]'"
    report = Report(metrics=[MetricInfo("size", "Size", "MiB", False)],
                    stages=[StageResult("Original", values={"size": 4.0},
                                        notes={"engine": note})])
    out = io.StringIO()
    report.print(Console(file=out, width=200))
    assert note in out.getvalue()
