"""The modules that predate `models/` and `serving/`, and the keywords renamed since, still work
until tfprobunet 0.3.0, and say where their names went."""

import ast
import importlib
import os
import sys
import warnings

import numpy as np
import pytest

import tfprobunet
from tfprobunet import models, serving


@pytest.mark.parametrize("old, new, name, target", [
    ("tfprobunet.model", "tfprobunet.models", "ProbabilisticUNet",
     lambda: models.ProbabilisticUNet),
    ("tfprobunet.baselines", "tfprobunet.models", "DropoutUNet", lambda: models.DropoutUNet),
    ("tfprobunet.export", "tfprobunet.serving.export", "export_for_serving",
     lambda: serving.export_for_serving),
])
def test_old_modules_warn_naming_the_new_path(monkeypatch, old, new, name, target):
    monkeypatch.delitem(sys.modules, old, raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        module = importlib.import_module(old)
    messages = [str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)]
    assert len(messages) == 1 and old in messages[0] and new in messages[0], messages
    assert "removed in tfprobunet 0.3.0" in messages[0], messages
    assert getattr(module, name) is target()


def test_import_tfprobunet_warns_of_nothing(monkeypatch):
    """`import tfprobunet` no longer imports `baselines`; `tfprobunet.baselines` still works."""
    monkeypatch.delitem(sys.modules, "tfprobunet.baselines", raising=False)
    monkeypatch.delattr(tfprobunet, "baselines", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        importlib.reload(tfprobunet)
    assert [w for w in caught if issubclass(w.category, DeprecationWarning)
            and "tfprobunet" in str(w.message)] == []
    with pytest.warns(DeprecationWarning, match="tfprobunet.models"):
        assert tfprobunet.baselines.MHeads is models.MHeads


@pytest.mark.parametrize("old, name, target", [
    ("tfprobunet.model", "GED_SEED", lambda: importlib.import_module("tfprobunet.models.base")),
    ("tfprobunet.model", "GECO_DECAY", lambda: importlib.import_module("tfprobunet.models.geco")),
    *[("tfprobunet.export", name,
       lambda: importlib.import_module("tfprobunet.serving.signatures"))
      for name in ("SIGNATURES", "RANDOM_SEED", "samples_cheaply")],
])
def test_old_modules_keep_the_names_that_moved_out_of_their_successors(old, name, target):
    """The new modules hold only what they use; the old paths still give every name they had."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        module = importlib.import_module(old)
    assert getattr(module, name) is getattr(target(), name)


def test_training_pipeline_old_keyword_warns_and_draws_the_same():
    from tfprobunet.data import pipeline, synthetic

    _, weights = synthetic.flip_modes((0.5, 0.2))
    data = synthetic.flips(4, 16, (0.5, 0.2), seed=0)
    new = pipeline.training_pipeline(data, 4, annotation_weights=weights, seed=2)
    with pytest.warns(DeprecationWarning, match=r"annotation_probabilities=.*removed in "
                                                r"tfprobunet 0\.3\.0.*annotation_weights="):
        old = pipeline.training_pipeline(data, 4, annotation_probabilities=weights, seed=2)
    for (_, a), (_, b) in zip(new.take(3).as_numpy_iterator(), old.take(3).as_numpy_iterator()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(TypeError, match="only annotation_weights"):
        pipeline.training_pipeline(data, 4, weights, annotation_probabilities=weights)


def _deprecation_messages():
    """`(file, message)` of every `warnings.warn(..., DeprecationWarning, ...)` in the package
    (messages are string literals: an f-string would not be read here)."""
    root = os.path.dirname(tfprobunet.__file__)
    for folder, _, names in os.walk(root):
        for name in sorted(n for n in names if n.endswith(".py")):
            path = os.path.join(folder, name)
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                if (isinstance(node, ast.Call) and ast.unparse(node.func) == "warnings.warn"
                        and "DeprecationWarning" in ast.unparse(node)):
                    yield os.path.relpath(path, root), ast.literal_eval(node.args[0])


def test_every_deprecation_is_one_pytest_ini_turns_into_an_error():
    """pytest.ini's `error:tfprobunet:DeprecationWarning` matches the message's start, which does
    not depend on the frame `stacklevel` names; and each says when the old path goes."""
    found = list(_deprecation_messages())
    assert len(found) >= 4, found
    for path, message in found:
        assert message.startswith("tfprobunet"), (path, message)
        assert "will be removed in tfprobunet 0.3.0" in message, (path, message)
    with open(os.path.join(os.path.dirname(__file__), os.pardir, "pytest.ini")) as f:
        assert "error:tfprobunet:DeprecationWarning" in f.read().split("filterwarnings =")[1]


def test_epoch_log_initial_epoch_warns_and_is_unused(tmp_path):
    """`EpochLog(initial_epoch=...)` has done nothing since rows are replaced by epoch number:
    passing it warns; the rows written are those written without it."""
    from tfprobunet.callbacks import EpochLog

    with pytest.warns(DeprecationWarning, match=r"initial_epoch=.*removed in tfprobunet 0\.3\.0"):
        old = EpochLog(str(tmp_path / "old.csv"), initial_epoch=3)
    new = EpochLog(str(tmp_path / "new.csv"))
    for log in (old, new):
        for epoch, loss in ((0, 2.0), (1, 1.5), (0, 1.75)):  # epoch 0 again: a resume
            log.on_epoch_end(epoch, {"loss": loss})
    assert old.rows() == new.rows() == [{"epoch": "0", "loss": "1.75"}]  # epoch 1 dropped
