"""Progress output: tqdm bars only on a terminal; elsewhere one line per epoch and nothing per batch."""

from __future__ import annotations

import io
import re
import sys

import pytest

from uqkit.bench.progress import progress_bar, report_epoch
from uqkit.bench.runner import BenchConfig, run_bench

EPOCH_LINE = re.compile(
    r"^\[uqkit\] (?P<name>[a-z-]+) epoch (?P<epoch>\d+)/(?P<epochs>\d+): train loss \d+\.\d{4}, "
    r"val NLL \d+\.\d{4}, val accuracy \d+\.\d{2}%, \d+\.\d s$"
)


class _Terminal(io.StringIO):
    """A stream that says it is a terminal, as an interactive stderr does."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("progress", [True, False])
def test_without_a_terminal_one_line_per_epoch_and_no_bar_frames(
    fake_fashion_mnist, tmp_path, monkeypatch, progress
):
    stream = io.StringIO()  # a log file or a pipe: not a terminal
    monkeypatch.setattr(sys, "stderr", stream)
    methods, epochs = ["deterministic", "mc-dropout"], 3
    config = BenchConfig(out=tmp_path / "run", methods=methods, quick=True, epochs=epochs, progress=progress)
    results = run_bench(config, log=lambda *_: None)
    text = stream.getvalue()
    assert "\r" not in text  # no carriage-return frames, from training or evaluation
    if not progress:  # --no-progress: silence
        assert text == ""
        return
    lines = text.splitlines()
    assert all(EPOCH_LINE.match(line) for line in lines), lines
    expected = [(name, str(epoch), str(epochs)) for name in methods for epoch in range(1, epochs + 1)]
    assert [EPOCH_LINE.match(line).group("name", "epoch", "epochs") for line in lines] == expected
    history = results["tasks"]["fashion-mnist"]["methods"]["mc-dropout"]["history"]
    assert f"val NLL {history[-1]['val_nll']:.4f}" in lines[-1]  # the numbers of the history


def test_on_a_terminal_bars_are_drawn_and_epoch_lines_left_to_them(monkeypatch):
    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    with progress_bar(4, "deterministic epoch 1/2") as bar:
        for _ in range(4):
            bar.update(1)
    assert "\r" in terminal.getvalue() and "deterministic epoch 1/2" in terminal.getvalue()
    drawn = terminal.getvalue()
    record = {"epoch": 1, "train_loss": 0.5, "val_nll": 0.4, "val_accuracy": 0.9, "time_s": 1.0}
    report_epoch("deterministic", record, 2)
    assert terminal.getvalue() == drawn  # the bar shows progress there; no extra line
    with progress_bar(4, "off", enabled=False) as bar:
        bar.update(4)
    assert terminal.getvalue() == drawn


def test_epoch_line_format_without_a_terminal(monkeypatch):
    stream = io.StringIO()
    monkeypatch.setattr(sys, "stderr", stream)
    record = {"epoch": 3, "train_loss": 0.41234, "val_nll": 0.39211, "val_accuracy": 0.86123, "time_s": 12.34}
    report_epoch("mc-dropout", record, 10)
    assert stream.getvalue() == (
        "[uqkit] mc-dropout epoch 3/10: train loss 0.4123, val NLL 0.3921, val accuracy 86.12%, 12.3 s\n"
    )
    report_epoch("mc-dropout", record, 10, enabled=False)
    assert stream.getvalue().count("\n") == 1
