"""`make demo`: a fixed number of steps, whatever the machine's speed."""

import pytest

from tfprobunet import demo


@pytest.mark.slow
def test_demo_trains_exactly_its_steps_and_serves(tmp_path):
    summary = demo.run(str(tmp_path / "run"), steps=40, base_dir=str(tmp_path / "served"),
                       eval_examples=8)
    assert summary["steps"] == 40
    assert summary["evaluation"]["images"] == 8
    assert summary["serving"]["shapes"]["masks"] == [1, 16, demo.IMAGE_SIZE, demo.IMAGE_SIZE]
    with pytest.raises(ValueError, match="multiple of 500"):
        demo.run(str(tmp_path / "other"), steps=700)
