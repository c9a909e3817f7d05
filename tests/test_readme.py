"""The README's Python snippet and its own-data section run as written, on a step budget cut to a
few steps (the only change made to them), on data written here."""

import os
import re
import shlex

import numpy as np
from PIL import Image

from tfprobunet import cli

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
# The budgets written in the snippets, and the cut ones they run with here.
BUDGETS = [("--epochs 12 --steps-per-epoch 500", "--epochs 1 --steps-per-epoch 2"),
           ("epochs=12, steps_per_epoch=500", "epochs=1, steps_per_epoch=2")]


def _section(title):
    with open(README) as f:
        text = f.read()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def _blocks(section, language):
    return re.findall(rf"```{language}\n(.*?)```", section, re.S)


def _cut(code):
    for written, cut in BUDGETS:
        code = code.replace(written, cut)
    return code


def _write_folder(root, count=12, size=(90, 75)):
    """A user's folder: grey scans (one saved as RGB), 3 raters' 0/255 masks, some empty."""
    rng = np.random.default_rng(0)
    for kind in ("images", "masks"):
        os.makedirs(os.path.join(root, kind))
    yy, xx = np.mgrid[:size[0], :size[1]]
    for i in range(count):
        center = rng.uniform(20, 55, 2)
        blob = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 < 100
        image = np.clip(rng.normal(60, 20, size) + 120 * blob, 0, 255).astype(np.uint8)
        name = f"scan{i + 1:02d}"
        picture = Image.fromarray(image)
        (picture.convert("RGB") if i == 6 else picture).save(
            os.path.join(root, "images", f"{name}.png"))
        for rater in range(3):
            mask = blob if rng.random() < 0.7 else np.zeros_like(blob)
            Image.fromarray(mask.astype(np.uint8) * 255).save(
                os.path.join(root, "masks", f"{name}_{rater}.png"))
    return image


def test_the_own_data_commands_run_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    image = _write_folder("data")
    Image.fromarray(image).save("new.png")
    [commands] = _blocks(_section("Your own data"), "sh")
    lines = _cut(commands).replace("\\\n", " ").splitlines()
    assert len(lines) == 3
    for line in lines:
        argv = shlex.split(line.split("#")[0])
        assert argv[0] == "tfprobunet"
        assert cli.main(argv[1:]) == 0, line
    out = capsys.readouterr().out
    assert "model saved to runs/mine/model.keras" in out
    assert os.path.exists("runs/mine/evaluation/report.json")
    files = sorted(os.listdir("masks/new"))
    assert files == [f"sample_{i:02d}.png" for i in range(16)] + ["uncertainty.png"]
    with Image.open("masks/new/sample_00.png") as png:
        assert png.size == (75, 90)  # (width, height) of new.png


def test_the_own_data_python_snippet_runs_as_written(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _write_folder("data")
    [code] = _blocks(_section("Your own data"), "python")
    exec(compile(_cut(code), "README.md", "exec"), {})
    assert "(1, 16, 90, 75)" in capsys.readouterr().out


def test_the_python_section_snippet_runs_as_written(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    code = _blocks(_section("Python"), "python")[0]
    namespace = {}
    exec(compile(_cut(code), "README.md", "exec"), namespace)
    assert tuple(namespace["logits"].shape) == (4, 16, 32, 32, 11)


def test_the_serving_python_example_runs_against_a_server(tmp_path):
    from conftest import served_images, served_model
    from tfprobunet import serving

    base = str(tmp_path / "saved_models")
    serving.export_for_serving(served_model(3), base, "probunet")
    code = _blocks(_section("Serving"), "python")[0]  # the example at the top
    with serving.ModelServer(base, port=0, rest_port=None) as server:
        namespace = {"images": served_images()}
        exec(compile(code.replace("localhost:8500", f"127.0.0.1:{server.port}"), "README.md",
                     "exec"), namespace)
    assert namespace["first"]["masks"].shape == (2, 16, 16, 16)
    assert namespace["more"]["masks"].shape == (2, 1000, 16, 16)
