"""tfprobunet: the Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TensorFlow 2 / Keras 3.

Public API: `ProbabilisticUNet`, its layers (`UNet`, `AxisAlignedGaussian`, `FComb`), `train`,
`evaluate`, `compare` (the paper's comparison with the baselines), `export_for_serving`, and the
modules `models` (every model, one file each, the baselines too), `prediction` (samples at any
image size), `callbacks`, `latent` (what the latent space encodes), `losses`,
`metrics`, `data`, `saving` (`load_model` within size limits, refusing non-finite weights),
`serving` and `training` (presets, schedules);
`tfprobunet.tuning` (Keras Tuner, with the `tune` extra) is imported on its own.
"""


def _require_tf_keras():
    """TFP imports `tf_keras` on import; it is not a dependency of the package (see setup.py),
    so say which one matches the installed TensorFlow instead of failing inside TFP."""
    try:
        import tf_keras  # noqa: F401
    except ModuleNotFoundError as error:
        if error.name != "tf_keras":
            raise
        import tensorflow as tf

        minor = ".".join(tf.__version__.split(".")[:2])
        raise ModuleNotFoundError(
            "tfprobunet needs the tf-keras package, which TensorFlow Probability imports (the "
            f"library itself uses Keras 3), in the minor version of your TensorFlow "
            f"{tf.__version__}: pip install \"tf-keras~={minor}.0\". It is not installed with "
            "tfprobunet because pip would then replace your TensorFlow with the newest one.",
            name="tf_keras") from None


import os  # noqa: E402
import sys  # noqa: E402

from tfprobunet import _console  # noqa: E402

__version__ = "0.1.0"

__all__ = ["AxisAlignedGaussian", "FComb", "ProbabilisticUNet", "UNet", "baselines", "callbacks",
           "compare", "data", "evaluate", "export_for_serving", "latent", "losses", "metrics",
           "models", "prediction", "saving", "serving", "train", "training"]


_loaded = False


def _load():
    """Import the library, and TensorFlow with it: what `import tfprobunet` does, except under
    the console script, which calls this once its arguments are parsed (so that `tfprobunet
    --help` answers without TensorFlow). Registers the Keras classes `load_model` needs."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    # TensorFlow's start-up lines stay out of the output (TFPROBUNET_VERBOSE=1 shows them).
    with _console.filtered_stderr():
        _require_tf_keras()

        from tfprobunet import (callbacks, data, latent, losses, metrics, models, prediction,
                                saving, serving, training)
        from tfprobunet.comparison import compare
        from tfprobunet.evaluation import evaluate
        from tfprobunet.layers import AxisAlignedGaussian, FComb, UNet
        from tfprobunet.models import ProbabilisticUNet

        models.MODELS  # every model class, registered for `load_model`
        from tfprobunet.serving import export_for_serving
        from tfprobunet.training import train

        # CUDA is probed when the devices are first listed, which the first operation would
        # otherwise do outside this block (its `cuInit` failure on CPU-only machines). Listing
        # physical devices leaves them configurable (memory growth, logical devices).
        import tensorflow as tf

        tf.config.list_physical_devices()
    globals().update({name: value for name, value in locals().items() if name in __all__})


def _console_script():
    """Whether this process is the command line: the `tfprobunet` console script, or
    `python -m tfprobunet.cli` (whose `sys.argv[0]` is "-m" while the package is imported)."""
    argv = getattr(sys, "argv", None) or [""]
    if argv[0] == "-m":
        original = getattr(sys, "orig_argv", [])
        return "-m" in original and original[original.index("-m") + 1:][:1] == ["tfprobunet.cli"]
    return os.path.splitext(os.path.basename(argv[0]))[0] in ("tfprobunet", "tfprobunet-script")


def __getattr__(name):
    if name == "baselines":  # deprecated (it warns): imported only when asked for
        import importlib

        return importlib.import_module("tfprobunet.baselines")
    # Otherwise only reached under the console script, before `_load()`.
    if name in __all__ and not _loaded:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'tfprobunet' has no attribute {name!r}")


if not _console_script():
    _load()
