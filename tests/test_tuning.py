"""Keras Tuner searches over the model: trials that save, reload and report `val_ged`."""

import keras
import keras_tuner
import numpy as np
import pytest

from tfprobunet import data
from conftest import tiny_model


@pytest.mark.compat
@pytest.mark.slow
def test_two_trial_search_reports_val_ged_and_returns_a_working_best_model(tmp_path):
    train = data.load("flips", "train", image_size=16, num_examples=8)
    val = data.load("flips", "val", image_size=16, num_examples=4)
    train_ds = data.training_pipeline(train.dataset, 4, train.annotation_weights, seed=0)
    # (images, annotations, weights): all annotations per image, which yields val_ged
    val_ds = data.evaluation_pipeline(val.dataset, 4, val.annotation_weights)

    def build(hp):
        model = tiny_model(train.num_classes, latent_dim=hp.Choice("latent_dim", [2, 3]),
                           ged_samples=2, ged_classes=train.classes)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        return model

    tuner = keras_tuner.RandomSearch(build, objective=keras_tuner.Objective("val_ged", "min"),
                                     max_trials=2, seed=0, directory=str(tmp_path),
                                     project_name="search")
    tuner.search(train_ds, epochs=1, steps_per_epoch=2, validation_data=val_ds,
                 verbose=0)
    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2
    assert all(t.status == "COMPLETED" and np.isfinite(t.score) for t in trials)
    assert trials[0].score <= trials[1].score
    best_hp = tuner.get_best_hyperparameters()[0]
    assert best_hp.values == trials[0].hyperparameters.values

    # The best model comes back from the trial's files with its weights and its val_ged.
    best = tuner.get_best_models(1)[0]
    assert best.latent_dim == best_hp["latent_dim"]
    logs = best.evaluate(val_ds, verbose=0, return_dict=True)
    assert logs["ged"] == pytest.approx(trials[0].score, abs=1e-5)
    images = next(iter(val.dataset.batch(2)))[0]
    assert best.sample(images, 3, seed=1).shape == (2, 3, 16, 16, train.num_classes)

