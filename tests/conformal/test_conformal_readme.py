"""The README's conformal snippet runs as written and prints the numbers its comments show."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> str:
    text = README.read_text()
    section = text.split("## Conformal prediction: sets and intervals with guaranteed coverage", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.usefixtures("one_thread")
def test_readme_snippet_prints_what_its_comments_say(capsys):
    code = _snippet()
    exec(compile(code, str(README), "exec"), {})  # the README's own code
    printed = [list(map(float, line.split())) for line in capsys.readouterr().out.strip().splitlines()]
    claimed = [
        list(map(float, re.findall(r"\d+\.\d+", line.split("#")[-1])))
        for line in code.splitlines()
        if line.startswith("print(")
    ]
    assert len(printed) == len(claimed) == 3
    for values, comments in zip(printed, claimed, strict=True):
        assert values[: len(comments)] == pytest.approx(comments, abs=1e-3)
    (set_coverage, _), (interval_coverage, _), (own_coverage,) = printed
    assert abs(set_coverage - 0.9) < 0.02 and abs(interval_coverage - 0.9) < 0.02
    assert own_coverage < 0.7  # the model's own 90% interval misses: conformal fixed it
