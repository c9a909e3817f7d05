"""`make demo`: a fixed number of steps, whatever the machine's speed."""

import re

import pytest

from tfprobunet import demo


@pytest.mark.slow
def test_demo_trains_exactly_its_steps_and_serves(tmp_path, capsys):
    summary = demo.run(str(tmp_path / "run"), steps=40, base_dir=str(tmp_path / "served"),
                       eval_examples=8)
    # One line per epoch and a few more: the full demo (12 epochs) fits on a 30-line screen
    # before its JSON summary, without escape codes when the output is not a terminal.
    lines = capsys.readouterr().out.splitlines()
    epochs = [line for line in lines if re.match(r"epoch +\d+/1: loss", line)]
    assert len(epochs) == 1, lines
    assert len(lines) - len(epochs) + demo.STEPS // demo.STEPS_PER_EPOCH <= 30, lines
    assert not any("\x1b" in line for line in lines)
    assert summary["steps"] == 40
    assert summary["evaluation"]["images"] == 8
    assert summary["serving"]["shapes"]["masks"] == [1, 16, demo.IMAGE_SIZE, demo.IMAGE_SIZE]
    with pytest.raises(ValueError, match="multiple of 500"):
        demo.run(str(tmp_path / "other"), steps=700)
