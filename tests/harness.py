"""One harness for every model: `run_model_test(cls, init_kwargs)` gives the pytest test class
of the checks each model of the package passes, so a new model gets all of them in one line:

    TestDropoutUNet = run_model_test(DropoutUNet, dict(num_channels=[4, 8, 8], ...))

The checks (after keras-hub's `TestCase`: `run_serialization_test`, `run_model_saving_test`,
`run_task_test`), each its own test:

- `get_config` / `from_config`: every constructor argument in the config with the value given,
  the same config back (also through JSON and the registered name), the same weights;
- `compile` takes an optimizer only (the loss is built in);
- `.keras` exactness after a training step: every weight and optimizer variable in the file and
  back, the same `sample(images, m, seed=)` and `call`;
- one training step: every trainable variable gets a gradient from the loss and moves;
- `MirroredStrategy` over conftest's two logical CPUs: one step gives the one-device loss and
  weights (models whose training step draws no noise) or, for the others, a finite loss that
  moves every variable;
- GECO (`tfprobunet.models.geco`, for models given `geco_kwargs`): under `MirroredStrategy`, the
  moving average after three steps is the one of the logged global-batch reconstructions (every
  GECO model, noise or not); and, when the training step draws no noise, the three steps give one
  device's weights, Lagrange multiplier and moving average;
- `sample`: shapes `(b, m, h, w, K)`; seeds pin the draws (random models), or sample i is
  output i mod M whatever the seed (an ensemble's members, M heads);
- `export_for_serving` + `serving.Servable`: `serving_default` gives what `sample` gives for
  the same seed, and refuses more samples than the export allows;
- `evaluate` reports a finite GED;
- mixed precision: under `mixed_bfloat16` one training step is finite and moves every
  variable, which stays float32, and samples are float32 logits;
- XLA: `sample` with a seed, compiled with `jit_compile=True`, gives what the default
  execution gives within float32 round-off.

A model opts out of a check only with its reason (`opt_outs={"xla": "why"}`): the check then
runs what still holds (finite samples of the right shape) and the reason stands in the test.

The round trips are marked `compat` (`make test-compat` runs them on the oldest Keras); the
serving check is not: the serving extra is not part of that set.
"""

import inspect
import io
import json
import os
import re
import warnings
import zipfile

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf

from tfprobunet import evaluation, saving, training
from tfprobunet.models import geco

# The options of `run_model_test`: `ModelTest`'s attributes of these names hold their defaults.
OPTIONS = ("input_shape", "outputs", "deterministic_training", "signatures", "geco_kwargs",
           "opt_outs")
# The checks a model may opt out of (`opt_outs`), each with its reason.
OPT_OUTS = ("mixed_precision", "xla")
# Optimizer steps of the GECO checks: the moving average and the multiplier carry state from one
# step to the next, so one step would not show an average taken over the wrong batch.
GECO_STEPS = 3


def saved_arrays(path, part="model"):
    """The datasets in the `model.weights.h5` of a `.keras` file, {path: array}: the model's
    (`part="model"`) or its optimizer's (`part="optimizer"`)."""
    with zipfile.ZipFile(path) as archive:
        weights = h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r")
    arrays = {}
    weights.visititems(lambda name, obj: arrays.__setitem__(name, obj[()])
                       if isinstance(obj, h5py.Dataset) else None)
    is_optimizer = {"model": False, "optimizer": True}[part]
    return {k: v for k, v in arrays.items() if k.startswith("optimizer/") == is_optimizer}


def _as_saved(value):
    """`value` as `get_config` returns it: tuples as lists."""
    return list(value) if isinstance(value, tuple) else value


def _assert_moved(variables, before, what):
    for variable, old in zip(variables, before):
        assert not np.allclose(variable, old), f"{variable.path} did not move {what}"


class ModelTest:
    """The harness's tests for `model_class(**init_kwargs)`; `run_model_test` makes the class.
    The other attributes are the `OPTIONS`, with their defaults."""

    model_class = None
    init_kwargs = {}
    # (b, h, w, c) of the test images; h and w divisible by 2**(len(num_channels) - 1).
    input_shape = (2, 16, 16, 1)
    # None: samples are random draws that a seed pins; M: sample i is the model's output i mod
    # M, whatever the seed (an ensemble's members, M heads).
    outputs = None
    # The training step draws no noise, so under MirroredStrategy it equals one device's (for
    # `init_kwargs`, and for the GECO configuration when `geco_kwargs` is given).
    deterministic_training = True
    # The signatures `export_for_serving` writes for the model (and `info`, which every export has).
    signatures = ("serving_default",)
    # None: the model has no GECO. A dict: the constructor arguments that, added to
    # `init_kwargs`, switch GECO on (`{}` when `init_kwargs` already do); `GECOModelTest`'s
    # checks then run on that configuration.
    geco_kwargs = None
    # {check of `OPT_OUTS`: the reason the model cannot pass it}.
    opt_outs = {}

    def make(self):
        """A new model, built for `input_shape`."""
        model = self.model_class(**self.init_kwargs)
        model.build((None, *self.input_shape[1:]))
        return model

    def batch(self, num_classes, batch=None, seed=0):
        """`(images (b, h, w, c) float32, segmentations (b, h, w) int32)`, random."""
        rng = np.random.default_rng(seed)
        shape = (batch or self.input_shape[0], *self.input_shape[1:])
        images = rng.random(shape, dtype=np.float32)
        return images, rng.integers(0, num_classes, shape[:3]).astype(np.int32)

    def optimizer(self):
        # Momentum: an optimizer state per variable, for the `.keras` file to hold.
        return keras.optimizers.SGD(0.05, momentum=0.9)

    def fit_step(self, model, seed=5):
        """One `fit` step on a batch of 4: the logs."""
        images, segmentations = self.batch(model.num_classes, batch=4, seed=seed)
        return model.fit(images, segmentations, batch_size=4, epochs=1, verbose=0,
                         shuffle=False).history

    @pytest.fixture(scope="class")
    def stepped(self):
        """`(model, its weights before, logs)` of one step on one device: the training, the
        `.keras` and the MirroredStrategy checks share it (a traced step takes seconds)."""
        keras.utils.set_random_seed(1234)
        model = self.make()
        initial = model.get_weights()
        model.compile(optimizer=self.optimizer())
        return model, initial, self.fit_step(model)

    @pytest.mark.compat
    def test_config_round_trip(self):
        model = self.make()
        images, _ = self.batch(model.num_classes)
        config = model.get_config()
        arguments = [p.name for p in inspect.signature(self.model_class).parameters.values()
                     if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        assert not [name for name in arguments if name not in config], "get_config drops these"
        for name, value in self.init_kwargs.items():
            assert config[name] == _as_saved(value), name
        assert json.loads(json.dumps(config)) == config
        clone = self.model_class.from_config(config)
        assert clone.get_config() == config
        registered = keras.saving.deserialize_keras_object(
            json.loads(json.dumps(keras.saving.serialize_keras_object(model))))
        assert type(registered) is self.model_class and registered.get_config() == config
        clone.build(images.shape)
        assert ([(w.path, tuple(w.shape)) for w in clone.weights]
                == [(w.path, tuple(w.shape)) for w in model.weights])
        clone.set_weights(model.get_weights())
        np.testing.assert_array_equal(clone(images), model(images))
        np.testing.assert_array_equal(clone.sample(images, 3, seed=2),
                                      model.sample(images, 3, seed=2))

    def test_compile_takes_an_optimizer_only(self):
        model = self.model_class(**self.init_kwargs)
        for kwargs in (dict(loss="sparse_categorical_crossentropy"), dict(metrics=["accuracy"])):
            with pytest.raises(ValueError, match=rf"{re.escape(model.LOSS_NAME)}.*optimizer only"
                                                 rf".*Received: {next(iter(kwargs))}"):
                model.compile(optimizer="adam", **kwargs)
        model.compile(optimizer="adam", jit_compile=False)  # what is meant is accepted

    @pytest.mark.compat
    def test_keras_file_holds_every_weight_and_loads_exactly(self, stepped, tmp_path):
        model, _, _ = stepped  # trained: its optimizer has a state
        images, _ = self.batch(model.num_classes)
        path = str(tmp_path / "model.keras")
        model.save(path)
        # Keras < 3.15 silently drops the weights of layers kept in nested lists: count them.
        assert len(saved_arrays(path)) == len(model.weights)
        assert len(saved_arrays(path, "optimizer")) == len(model.optimizer.variables)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loaded = saving.load_model(path)
        assert not [str(w.message) for w in caught if "compile" in str(w.message)]
        assert type(loaded) is self.model_class
        assert loaded.get_config() == model.get_config()
        # The optimizer's state comes back too, so training continues where it stopped.
        for saved, original in ((loaded.weights, model.weights),
                                (loaded.optimizer.variables, model.optimizer.variables)):
            assert len(saved) == len(original)
            for a, b in zip(saved, original):
                np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=b.path)
        np.testing.assert_array_equal(loaded.sample(images, 3, seed=7),
                                      model.sample(images, 3, seed=7))
        np.testing.assert_array_equal(loaded(images), model(images))

    @pytest.mark.compat
    def test_one_training_step_moves_every_trainable_variable(self, stepped):
        """The bug of existing TF2 ports: parts whose weights never train."""
        model, initial, logs = stepped
        fresh = self.make()
        fresh.set_weights(initial)
        images, segmentations = self.batch(model.num_classes, batch=4, seed=5)
        with tf.GradientTape() as tape:  # the loss alone, without weight decay
            loss = tf.reduce_mean(fresh.loss_terms(images, segmentations)["loss"])
        for variable, gradient in zip(fresh.trainable_variables,
                                      tape.gradient(loss, fresh.trainable_variables)):
            assert gradient is not None, f"{variable.path} gets no gradient"
            assert np.any(gradient.numpy() != 0), f"{variable.path} gets a zero gradient"
        assert set(logs) == set(model.TERMS)
        assert all(np.isfinite(values[0]) for values in logs.values()), logs
        _assert_moved(model.trainable_variables, fresh.trainable_variables, "in one step")

    def test_mirrored_step_equals_one_device(self, stepped):
        single_model, initial, single = stepped
        strategy = training.make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2, "conftest configures 2 logical CPU devices"
        with strategy.scope():
            model = self.make()
            model.set_weights(initial)
            model.compile(optimizer=self.optimizer())
        assert getattr(model, "geco", None) is None or self.geco_kwargs is not None, (
            "The model has GECO: pass geco_kwargs={} to run_model_test for the GECO checks.")
        before = [v.numpy() for v in model.trainable_variables]
        replicated = self.fit_step(model)
        assert set(replicated) == set(single)
        assert all(np.isfinite(values[0]) for values in replicated.values()), replicated
        _assert_moved(model.trainable_variables, before, "under MirroredStrategy")
        if self.deterministic_training:  # else each replica draws its own noise
            for key in single:
                assert replicated[key][0] == pytest.approx(single[key][0], rel=1e-4), key
            for a, b in zip(single_model.get_weights(), model.get_weights()):
                np.testing.assert_allclose(b, a, atol=1e-5, rtol=0)

    def test_sample_shapes_and_seeds(self):
        model = self.make()
        images, _ = self.batch(model.num_classes)
        b, h, w = images.shape[:3]
        drawn = model.sample(images, 3, seed=4).numpy()
        assert drawn.shape == (b, 3, h, w, model.num_classes)
        assert model.sample(images).shape == (b, 1, h, w, model.num_classes)
        np.testing.assert_array_equal(model.sample(images, 3, seed=4), drawn)
        call = model(images).numpy()
        assert call.shape == (b, h, w, model.num_classes)
        np.testing.assert_array_equal(model(images), call)  # `call` (and `predict`) repeats
        if self.outputs is None:  # random draws: the seed pins them, each one differs
            assert not np.allclose(model.sample(images, 3, seed=5), drawn)
            assert not np.allclose(drawn[:, 0], drawn[:, 1])
            assert not np.allclose(model.sample(images, 3), model.sample(images, 3))
        else:  # M outputs, cycled, whatever the seed; `call` is the first
            m = self.outputs
            cycled = model.sample(images, 2 * m, seed=4).numpy()
            np.testing.assert_array_equal(cycled[:, m:], cycled[:, :m])
            np.testing.assert_array_equal(model.sample(images, m, seed=5), cycled[:, :m])
            np.testing.assert_array_equal(model.sample(images, m), cycled[:, :m])
            assert not any(np.allclose(cycled[:, 0], cycled[:, i]) for i in range(1, m))
            np.testing.assert_allclose(call, cycled[:, 0], atol=1e-6)

    def test_exported_model_serves_what_sample_gives(self, tmp_path):
        from tfprobunet import serving  # not in `make test-compat`'s set

        model = self.make()
        images, _ = self.batch(model.num_classes)
        path = serving.export_for_serving(model, str(tmp_path), "model", max_samples=4)
        servable = serving.Servable("model", int(os.path.basename(path)), path)
        try:
            assert set(servable.signatures) == {*self.signatures, "info"}

            def predict(num_samples, seed):
                return servable.run("serving_default", {
                    "images": images, "num_samples": np.int32(num_samples),
                    "seed": np.int32(seed)})

            served = predict(3, [3, 4])
            expected = tf.nn.softmax(model.sample(images, 3, seed=tf.constant([3, 4]))).numpy()
            np.testing.assert_allclose(served["probabilities"], expected, atol=1e-5)
            np.testing.assert_array_equal(served["masks"], expected.argmax(-1))
            again = predict(3, [3, 4])
            for key in ("masks", "probabilities"):
                np.testing.assert_array_equal(again[key], served[key])
            if self.outputs is None:
                assert not np.allclose(predict(3, [3, 5])["probabilities"],
                                       served["probabilities"])
            with pytest.raises(serving.ServingError) as refused:
                predict(5, [3, 4])
            assert refused.value.code == "INVALID_ARGUMENT"
            assert "above max_samples = 4" in refused.value.message
        finally:
            servable.close()

    def test_evaluate_reports_finite_ged(self):
        model = self.make()
        images, first = self.batch(model.num_classes, batch=4)
        _, second = self.batch(model.num_classes, batch=4, seed=1)
        dataset = tf.data.Dataset.from_tensor_slices((images, np.stack([first, second], 1)))
        report = evaluation.evaluate(model, dataset, sample_counts=(1, 4), verbose=0,
                                     num_classes=model.num_classes)
        assert report["num_images"] == 4
        assert all(np.isfinite(report["ged"][k]["mean"]) for k in ("1", "4"))


    def _opted_out(self, check):
        reason = self.opt_outs.get(check)
        if reason is not None and not (isinstance(reason, str) and len(reason.split()) >= 5):
            raise ValueError(f"opt_outs[{check!r}] must give the reason in words; received "
                             f"{reason!r}")
        return reason

    def test_a_mixed_bfloat16_step_is_finite_and_keeps_float32_variables(self):
        reason = self._opted_out("mixed_precision")
        keras.mixed_precision.set_dtype_policy("mixed_bfloat16")
        try:
            keras.utils.set_random_seed(1234)
            model = self.make()
        finally:
            keras.mixed_precision.set_dtype_policy("float32")
        images, _ = self.batch(model.num_classes)
        samples = model.sample(images, 2, seed=3)
        assert samples.dtype == tf.float32 and np.isfinite(samples).all()
        if reason is not None:
            return
        before = [v.numpy() for v in model.trainable_variables]
        model.compile(optimizer=self.optimizer())
        logs = self.fit_step(model)
        assert all(np.isfinite(v).all() for v in logs.values()), logs
        assert all(v.dtype == "float32" for v in model.trainable_variables)
        _assert_moved(model.trainable_variables, before, "in a mixed_bfloat16 step")

    def test_sample_with_a_seed_is_the_same_under_xla(self):
        reason = self._opted_out("xla")
        model = self.make()
        images, _ = self.batch(model.num_classes)

        def sample(x):
            return model.sample(x, 3, seed=tf.constant([7, 8]))

        xla = tf.function(sample, jit_compile=True)(images).numpy()
        assert xla.shape == (images.shape[0], 3, *images.shape[1:3], model.num_classes)
        assert np.isfinite(xla).all()
        if reason is None:
            np.testing.assert_allclose(xla, tf.function(sample)(images).numpy(), atol=1e-4,
                                       rtol=1e-4)


class GECOModelTest(ModelTest):
    """`ModelTest` and the checks of GECO's state under `MirroredStrategy`: its moving average
    and Lagrange multiplier (`model.geco`, a `tfprobunet.models.geco.GECO`) are updated in replica
    context from values all-reduced over the global batch (`geco.global_mean`)."""

    def make_geco(self):
        """A new model with GECO (`init_kwargs` and `geco_kwargs`), built."""
        model = self.model_class(**{**self.init_kwargs, **self.geco_kwargs})
        model.build((None, *self.input_shape[1:]))
        assert isinstance(getattr(model, "geco", None), geco.GECO), (
            f"geco_kwargs={self.geco_kwargs} give {self.model_class.__name__} no `geco` layer")
        return model

    def geco_optimizer(self):
        # Smaller steps than `optimizer`'s 0.05, with which the HPU-Net's summed losses
        # (hundreds of nats) reach NaN within three steps.
        return keras.optimizers.SGD(1e-4, momentum=0.9)

    def geco_steps(self, model):
        """`GECO_STEPS` `fit` calls of one step each, on other batches of 4: each step's logs,
        checked finite (NaN would equal NaN below)."""
        logs = [self.fit_step(model, seed=10 + step) for step in range(GECO_STEPS)]
        assert all(np.isfinite(v[0]) for step in logs for v in step.values()), logs
        return logs

    @pytest.fixture(scope="class")
    def geco_mirrored(self):
        """`(model, its weights before, each step's logs)` of the GECO steps under
        `MirroredStrategy`, which both checks read."""
        strategy = training.make_strategy("mirrored")
        assert strategy.num_replicas_in_sync == 2, "conftest configures 2 logical CPU devices"
        keras.utils.set_random_seed(1234)
        with strategy.scope():
            model = self.make_geco()
            model.compile(optimizer=self.geco_optimizer())
        initial = model.get_weights()
        return model, initial, self.geco_steps(model)

    def test_mirrored_geco_average_is_over_the_global_batch(self, geco_mirrored):
        """Noise or not: each replica's average must move by the global batch's mean, the one
        the trackers log, not by its own half of the batch."""
        model, _, logs = geco_mirrored
        expected = None
        for step in logs:
            value = step["reconstruction"][0]
            expected = value if expected is None else (
                model.geco.decay * expected + (1 - model.geco.decay) * value)
        # Relative: a summed reconstruction is hundreds of nats.
        np.testing.assert_allclose(model.geco.average.numpy(), expected, rtol=1e-5,
                                   err_msg="GECO's moving average is not the global batch's")
        assert model.geco.initialized.numpy() == 1.0
        assert np.isfinite(model.geco.lagrange_multiplier().numpy())



class DeterministicGECOModelTest(GECOModelTest):
    """`GECOModelTest` for a GECO configuration whose training step draws no noise: the
    mirrored steps must also give one device's weights, multiplier and average. (A model whose
    training draws noise cannot: the HPU-Net samples its posterior latents and mines pixels by
    Gumbel top-k in every step; there the average's check above is what runs.)"""

    def test_mirrored_geco_steps_equal_one_device(self, geco_mirrored):
        model, initial, replicated = geco_mirrored
        single_model = self.make_geco()
        single_model.set_weights(initial)
        single_model.compile(optimizer=self.geco_optimizer())
        single = self.geco_steps(single_model)
        for step, (a, b) in enumerate(zip(single, replicated)):
            assert set(b) == set(a)
            for key in a:
                assert b[key][0] == pytest.approx(a[key][0], rel=1e-4), (step, key)
        multiplier = single_model.geco.lagrange_multiplier().numpy()
        assert abs(multiplier - geco.GECO_INITIAL_LAMBDA) > 1e-3, (
            f"lambda hardly moved ({multiplier}): geco_kwargs should make it move")
        np.testing.assert_allclose(model.geco.lagrange_multiplier().numpy(), multiplier,
                                   atol=1e-5, rtol=0, err_msg="GECO's Lagrange multiplier")
        np.testing.assert_allclose(model.geco.average.numpy(),
                                   single_model.geco.average.numpy(), atol=1e-5, rtol=1e-5,
                                   err_msg="GECO's moving average")
        for a, b in zip(single_model.weights, model.weights):
            np.testing.assert_allclose(b.numpy(), a.numpy(), atol=1e-5, rtol=0, err_msg=a.path)


def run_model_test(cls, init_kwargs, **options):
    """The harness's tests for `cls(**init_kwargs)`, as a test class: bind it to a name that
    starts with `Test` in a test module, and pytest collects each check as a test.

    Args:
        cls: the model class, a `tfprobunet.models.SegmentationSampler`.
        init_kwargs: small constructor arguments (e.g. `num_channels=[4, 8, 8]`,
            `convs_per_block=1`); values other than the defaults check `get_config` better.
        **options: the `OPTIONS` (`input_shape`, `outputs`, `deterministic_training`,
            `signatures`, `geco_kwargs`, `opt_outs`; `ModelTest` says what they mean), where the
            model differs from their defaults. With `geco_kwargs`, the class is a `GECOModelTest`
            (`DeterministicGECOModelTest` when training draws no noise).
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise TypeError(f"Unknown options {unknown}: run_model_test takes {sorted(OPTIONS)}.")
    if options.get("geco_kwargs") is None:
        base = ModelTest
    elif options.get("deterministic_training", ModelTest.deterministic_training):
        base = DeterministicGECOModelTest
    else:
        base = GECOModelTest
    unknown = sorted(set(options.get("opt_outs", {})) - set(OPT_OUTS))
    if unknown:
        raise TypeError(f"Unknown opt_outs {unknown}: a model may opt out of {OPT_OUTS}.")
    return type(f"Test{cls.__name__}", (base,),
                dict(model_class=cls, init_kwargs=dict(init_kwargs), **options))
