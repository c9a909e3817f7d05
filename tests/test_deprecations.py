"""The modules that predate `models/` and `serving/` still import, and say where their names
went."""

import importlib
import sys
import warnings

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
