"""Latent-space inspection: the grid decodes the latents it says, computed here by hand from the
prior; its centre is the prior mean; the posteriors are the model's; the figure and the CLI."""

import json
import os
import re

import numpy as np
import pytest
from PIL import Image

from conftest import cli_error, random_batch, tiny_model
from tfprobunet import cli, latent, plots


@pytest.fixture(scope="module")
def model():
    model = tiny_model(num_classes=3, latent_dim=3)
    model.build((None, 16, 16, 1))
    return model


def _example():
    images, _ = random_batch(num_classes=3, batch=1)
    annotations = np.stack([random_batch(num_classes=3, batch=1, seed=s)[1][0]
                            for s in range(4)])
    return images[0], annotations


def test_each_grid_point_decodes_the_latent_computed_by_hand(model):
    image, _ = _example()
    inspection = latent.inspect(model, image, axes=(2, 0), extent=1.5, num_steps=3)
    np.testing.assert_allclose(inspection["offsets"], [-1.5, 0.0, 1.5])
    features, prior = model.features(image[None])
    loc, scale = prior.loc.numpy()[0], prior.stddev().numpy()[0]
    for i, j in [(0, 0), (0, 2), (2, 1), (1, 1)]:
        # Rows move along axis 2, columns along axis 0, axis 1 stays at the prior mean.
        z = loc.copy()
        z[2] += scale[2] * [-1.5, 0.0, 1.5][i]
        z[0] += scale[0] * [-1.5, 0.0, 1.5][j]
        np.testing.assert_allclose(inspection["latents"][i, j], z, rtol=1e-6)
        expected = model.decode(features, z[None]).numpy()[0]
        np.testing.assert_allclose(inspection["logits"][i, j], expected, atol=1e-5)
    # The centre is the prior mean: what calling the model gives.
    np.testing.assert_allclose(inspection["logits"][1, 1], model(image[None]).numpy()[0],
                               atol=1e-5)
    assert inspection["logits"].shape == (3, 3, 16, 16, 3)


def test_posteriors_are_the_models_placed_in_prior_units(model):
    image, annotations = _example()
    inspection = latent.inspect(model, image, annotations)
    _, prior = model.features(image[None])
    loc, scale = prior.loc.numpy()[0], prior.stddev().numpy()[0]
    for k, annotation in enumerate(annotations):
        expected = model.posterior_distribution(image[None], annotation[None]).loc.numpy()[0]
        np.testing.assert_allclose(inspection["posterior_loc"][k], expected, atol=1e-5)
        np.testing.assert_allclose(inspection["posterior_offsets"][k], (expected - loc) / scale,
                                   rtol=1e-4, atol=1e-5)
    spread = inspection["spread"]
    np.testing.assert_allclose(spread, inspection["posterior_offsets"].std(axis=0))
    # Without --axes: the two axes the annotations spread most along.
    unused = [a for a in range(3) if a not in inspection["axes"]]
    assert min(spread[list(inspection["axes"])]) >= spread[unused[0]]
    assert inspection["axes"][0] != inspection["axes"][1]


def test_bad_arguments_say_what_was_received(model):
    image, _ = _example()
    with pytest.raises(ValueError, match=r"two different latent axes in \[0, 3\).*\(1, 1\)"):
        latent.inspect(model, image, axes=(1, 1))
    with pytest.raises(ValueError, match=r"two different latent axes.*\(0, 3\)"):
        latent.inspect(model, image, axes=(0, 3))
    with pytest.raises(ValueError, match=r"one image, \(h, w, c\)\. Received shape \(1, 16"):
        latent.inspect(model, image[None])
    with pytest.raises(ValueError, match="`num_steps` >= 2. Received: extent=2.0, num_steps=1"):
        latent.inspect(model, image, num_steps=1)


def test_figure_and_cli(model, tmp_path, capsys):
    image, annotations = _example()
    path = tmp_path / "latent.png"
    plots.latent_space(latent.inspect(model, image, annotations, num_steps=3), path)
    width, height = Image.open(path).size
    assert width > 400 and height > 300

    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    image_path = str(tmp_path / "image.png")
    Image.fromarray(np.uint8(image[..., 0] * 255)).save(image_path)
    out = str(tmp_path / "figures" / "from_image.png")
    cli.main(["inspect", "--model", model_path, "--image", image_path, "--axes", "1,2",
              "--out", out])
    assert os.path.getsize(out) > 0

    assert re.search(r"either --image PATH .* Received: --image None, --dataset None",
                     cli_error(capsys, ["inspect", "--model", model_path, "--out", out]))


def test_cli_takes_an_image_and_its_annotations_from_a_dataset(tmp_path, capsys):
    model = tiny_model(num_classes=2, latent_dim=2)
    model.build((None, 16, 16, 1))
    model_path = str(tmp_path / "model.keras")
    model.save(model_path)
    out = str(tmp_path / "latent.png")
    cli.main(["inspect", "--model", model_path, "--dataset", "graders", "--image-size", "16",
              "--index", "3", "--steps", "3", "--out", out])
    summary = json.loads(capsys.readouterr().out.splitlines()[0])
    assert sorted(summary["axes"]) == [0, 1] and len(summary["posterior_spread"]) == 2
    assert os.path.getsize(out) > 0
    assert "has no image --index 500" in cli_error(
        capsys, ["inspect", "--model", model_path, "--dataset", "graders", "--image-size", "16",
                 "--index", "500", "--out", out])
