"""The paper's baselines (section 3): each one's defining property. The checks every model of the
package passes (config, `.keras`, one training step, MirroredStrategy, sampling, serving,
`evaluate`) are the harness's (`harness.py`), one line per model below."""

import ast
import os
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

import tfprobunet.models
from tfprobunet import losses
from tfprobunet.models import DropoutUNet, Image2ImageVAE, MHeads, UNetEnsemble
from conftest import random_batch
from harness import run_model_test, saved_arrays

# The harness's models: tiny, with arguments other than the defaults (get_config must keep them).
SMALL = dict(num_channels=[4, 8, 8], convs_per_block=1, seed=1, ged_samples=4)
TestDropoutUNet = run_model_test(
    DropoutUNet, dict(SMALL, num_classes=3, dropout_rate=0.4, dropout_blocks=2,
                      reconstruction="mean", weight_decay=1e-4, ged_classes=[1, 2]),
    deterministic_training=False,
    opt_outs={"xla": "its dropout masks draw from seeds folded in at run time, one per layer, "
                     "which XLA's Philox turns into other draws than TensorFlow's"})
TestUNetEnsemble = run_model_test(UNetEnsemble, dict(SMALL, num_members=2), outputs=2)
TestMHeads = run_model_test(MHeads, dict(SMALL, num_heads=3, epsilon=0.1, reconstruction="mean"),
                            outputs=3)
TestImage2ImageVAE = run_model_test(
    Image2ImageVAE, dict(SMALL, latent_dim=3, beta=0.5, weight_decay=0.0),
    input_shape=(2, 16, 16, 3), deterministic_training=False)

# The models of the tests of each baseline's own property.
TINY = dict(num_classes=2, num_channels=[8, 16, 32], convs_per_block=1, seed=1)
BASELINES = {
    "dropout": lambda: DropoutUNet(**TINY, dropout_rate=0.5),
    "ensemble": lambda: UNetEnsemble(**TINY, num_members=3),
    "mheads": lambda: MHeads(**TINY, num_heads=3),
    "i2ivae": lambda: Image2ImageVAE(**TINY, latent_dim=2),
}


def _built(name):
    model = BASELINES[name]()
    model.build((None, 16, 16, 1))
    return model


def _record_inputs(layer):
    """Keep what `layer` receives, call by call (wraps the instance's `call`)."""
    received, call = [], layer.call

    def recording(inputs, *args, **kwargs):
        received.append(keras.ops.convert_to_numpy(inputs))
        return call(inputs, *args, **kwargs)

    layer.call = recording
    return received


@pytest.mark.parametrize("num_channels", [[8, 16], [8, 16, 32], [8, 16, 32, 64]])
def test_dropout_never_reaches_the_image(num_channels):
    """The image reaches the first convolution untouched at any depth; the inputs of the other
    encoder blocks and of every decoder block are dropped while sampling, up to
    `dropout_blocks` (3) of each."""
    model = DropoutUNet(**{**TINY, "num_channels": num_channels})
    model.build((None, 16, 16, 1))
    images, _ = random_batch(batch=2, size=16)
    images = images + 1.0  # no zero pixel, so a dropped one shows
    levels = len(num_channels)
    first = _record_inputs(model.unet.encoder.blocks[0][0])
    encoder = [_record_inputs(block[0]) for block in model.unet.encoder.blocks[1:]]
    decoder = [_record_inputs(block[0]) for block in model.unet.up_blocks]
    model.sample(images, 4, seed=3)
    np.testing.assert_array_equal(first[-1], np.repeat(images, 4, axis=0))
    zeros = [np.mean(inputs[-1] == 0.0) for inputs in encoder + decoder]
    # Every dropped block sees about half of its inputs zeroed (rate 0.5); an undropped one
    # would see none, as the first convolution's inputs are positive (ReLU features can be 0,
    # so the undropped level of a 4-level U-Net is checked against a pass without dropout).
    dropped = [i >= levels - 3 for i in range(1, levels)] + [True] * (levels - 1)
    assert all(z > 0.3 for z, d in zip(zeros, dropped) if d), zeros
    clean = model.unet.encoder(np.repeat(images, 4, axis=0))
    for i, d in enumerate(dropped[:levels - 1], start=1):
        if not d:
            pooled = keras.ops.convert_to_numpy(model.unet.encoder.pool(clean[i - 1]))
            np.testing.assert_array_equal(encoder[i - 1][-1], pooled)


def test_oracle_set_loss_hand_worked():
    # M = 3, epsilon = 0.05: the best head (1.0) weighs 0.95, the two others 0.025 each.
    per_head = tf.constant([[2.0, 1.0, 4.0], [3.0, 3.5, 0.5]])
    expected = [0.95 * 1.0 + 0.025 * (2.0 + 4.0), 0.95 * 0.5 + 0.025 * (3.0 + 3.5)]
    np.testing.assert_allclose(losses.oracle_set_loss(per_head, 0.05).numpy(), expected,
                               rtol=1e-6)
    np.testing.assert_allclose(losses.oracle_set_loss(per_head[:, :1], 0.05).numpy(),
                               [2.0, 3.0])


def test_m_heads_loss_is_the_oracle_set_loss_of_its_heads():
    model = _built("mheads")
    images, segmentations = random_batch(batch=2, size=16)
    heads = model.head_logits(images).numpy()  # (b, M, h, w, K)
    log_p = heads - np.log(np.exp(heads).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_p, segmentations[:, None, :, :, None], -1)[..., 0]
    per_head = -picked.sum(axis=(2, 3))  # (b, M), summed over pixels
    best = per_head.argmin(1)
    expected = [0.95 * per_head[i, best[i]] + 0.025 * (per_head[i].sum() - per_head[i, best[i]])
                for i in range(2)]
    np.testing.assert_allclose(model.loss_terms(images, segmentations)["loss"].numpy(),
                               expected, rtol=1e-5)
    # Sample i is head i mod M.
    samples = model.sample(images, 5).numpy()
    np.testing.assert_allclose(samples, heads[:, [0, 1, 2, 0, 1]], atol=1e-6)


def test_ensemble_members_start_apart_and_train_independently():
    model = _built("ensemble")
    kernels = [unet.encoder.blocks[0][0].kernel.numpy() for unet in model.unets]
    assert not np.allclose(kernels[0], kernels[1]) and not np.allclose(kernels[1], kernels[2])
    # Member 1 trained inside the ensemble equals the same U-Net trained alone.
    alone = UNetEnsemble(**TINY, num_members=1)
    alone.build((None, 16, 16, 1))
    alone.unets[0].set_weights(model.unets[1].get_weights())
    alone.heads[0].set_weights(model.heads[1].get_weights())
    images, segmentations = random_batch(batch=4, size=16)
    for m in (model, alone):
        m.compile(optimizer=keras.optimizers.SGD(0.01))
        m.fit(images, segmentations, batch_size=4, epochs=1, verbose=0, shuffle=False)
    for a, b in zip(model.unets[1].get_weights() + model.heads[1].get_weights(),
                    alone.unets[0].get_weights() + alone.heads[0].get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(model.sample(images, 4)[:, 3].numpy(),
                               model.member_logits(images)[:, 0].numpy(), atol=1e-6)


def test_image2image_vae_prior_is_n01_and_posterior_sees_only_the_segmentation():
    model = _built("i2ivae")
    images, segmentations = random_batch(batch=2, size=16)
    other_images, _ = random_batch(batch=2, size=16, seed=9)
    kl = model.loss_terms(images, segmentations)["kl"].numpy()
    np.testing.assert_allclose(model.loss_terms(other_images, segmentations)["kl"].numpy(), kl,
                               rtol=1e-6)
    posterior = model.posterior_distribution(segmentations)
    mu, sigma = posterior.loc.numpy(), posterior.stddev().numpy()
    closed_form = np.sum(0.5 * (sigma**2 + mu**2 - 1.0) - np.log(sigma), axis=-1)
    np.testing.assert_allclose(kl, closed_form, rtol=1e-5, atol=1e-6)


DATA = os.path.join(os.path.dirname(__file__), "data")


@pytest.mark.compat
@pytest.mark.parametrize("name", ["dropout", "ensemble", "mheads", "i2ivae"])
def test_keras_file_written_before_the_shared_builder_still_loads(tmp_path, name):
    """Each baseline's `.keras` file written before the baselines shared `UNetWithHeads`
    (tfprobunet 0.1; 2 levels of 2 and 4 channels, 8x8 images, random weights) loads with every
    weight, gives the outputs it gave then, and saves again to the same weight paths."""
    path = os.path.join(DATA, f"v0_1_{name}.keras")
    expected = np.load(os.path.join(DATA, "v0_1_baselines_outputs.npz"))
    loaded = keras.models.load_model(path)
    arrays = saved_arrays(path)
    assert sorted(a.tobytes() for a in arrays.values()) == sorted(
        w.numpy().tobytes() for w in loaded.weights)
    np.testing.assert_allclose(loaded(expected["images"]), expected[f"{name}_call"],
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(loaded.sample(expected["images"], 3, seed=1),
                               expected[f"{name}_sample"], rtol=1e-5, atol=1e-6)
    loaded.save(tmp_path / "again.keras")
    again = saved_arrays(tmp_path / "again.keras")
    assert sorted(again) == sorted(arrays)
    for key, array in arrays.items():
        np.testing.assert_array_equal(again[key], array, err_msg=key)


BASELINE_FILES = ("dropout_unet.py", "ensemble.py", "m_heads.py", "image2image_vae.py")


def repeated_blocks(sources, size=6):
    """The runs of `size` consecutive lines that stand in more than one place of `sources`
    (`{name: Python source}`), compared stripped, blank lines and import statements left out
    (imports say what a file uses, not what it does): `{run: [name, ...]}`, a name per place."""
    places = {}
    for name, text in sources.items():
        imports = {line for node in ast.walk(ast.parse(text))
                   if isinstance(node, (ast.Import, ast.ImportFrom))
                   for line in range(node.lineno, node.end_lineno + 1)}
        lines = [line.strip() for number, line in enumerate(text.splitlines(), start=1)
                 if line.strip() and number not in imports]
        for i in range(len(lines) - size + 1):
            places.setdefault(tuple(lines[i:i + size]), []).append(name)
    return {run: names for run, names in places.items() if len(names) > 1}


def test_repeated_blocks_finds_a_block_and_passes_over_imports_and_blank_lines():
    block = "".join(f"x{i} = f({i})\n\n" for i in range(6))
    imports = "import os\nimport sys\nfrom a import (b,\n    c)\n"
    found = repeated_blocks({"a.py": "y = 1\n" + block,
                             "b.py": "def g():\n" + textwrap.indent(block, "    ")})
    assert list(found.values()) == [["a.py", "b.py"]]
    assert repeated_blocks({"a.py": imports * 2 + "y = 1\n", "b.py": "z = 2\n" + imports * 2}) == {}


def test_no_block_of_six_lines_is_repeated_among_the_baselines():
    """The four baselines share their builder (`models.base.UNetWithHeads`), not copies of it:
    no six lines stand twice among their files (issue 38)."""
    folder = os.path.dirname(tfprobunet.models.__file__)
    sources = {}
    for name in BASELINE_FILES:
        with open(os.path.join(folder, name)) as f:
            sources[name] = f.read()
    repeated = repeated_blocks(sources)
    assert not repeated, "\n\n".join(f"{names}:\n" + "\n".join(run)
                                      for run, names in repeated.items())

