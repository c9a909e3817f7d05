"""tfprobunet: the Probabilistic U-Net (Kohl et al., NeurIPS 2018) for TensorFlow 2 / Keras 3.

Public API: `ProbabilisticUNet`, its layers (`UNet`, `AxisAlignedGaussian`, `FComb`), `train`,
`evaluate`, `compare` (the paper's comparison with the baselines), `export_for_serving`, and the
modules `catalog` (the names of the models, datasets, splits, protocols and metrics, without
TensorFlow), `models` (every model, one file each, the baselines too; `register` adds yours),
`prediction` (samples at any image size), `callbacks`, `latent` (what the latent space
encodes), `losses`, `metrics`, `data`, `saving` (`load_model` within size limits, refusing
non-finite weights), `serving` and `training` (presets, schedules); `tfprobunet.tuning` (Keras
Tuner, with the `tune` extra) is imported on its own.

`import tfprobunet` imports no TensorFlow, whoever imports it: a module (`tfprobunet.data`) is
imported when first used, and the first class or function (`tfprobunet.train`) loads the library
and TensorFlow and registers every model class with Keras (`tfprobunet.saving.load_model`
imports the class a `.keras` file names in any case).
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


from tfprobunet import _console  # noqa: E402

# TensorFlow's start-up lines stay out of the output when it is imported, by the library or by
# you (TFPROBUNET_VERBOSE=1 shows them); nothing is imported here.
_console.hold_back_tensorflow_startup()

__version__ = "0.1.0"

# The public names, each with where it lives: `(module, attribute)`, or `(module, None)` for
# the module itself. `import tfprobunet` imports none of them (nor TensorFlow); a module is
# imported when it is first used, and the first class or function used loads them all,
# registering every model class with Keras.
_PUBLIC = {
    "AxisAlignedGaussian": ("tfprobunet.layers", "AxisAlignedGaussian"),
    "FComb": ("tfprobunet.layers", "FComb"),
    "ProbabilisticUNet": ("tfprobunet.models", "ProbabilisticUNet"),
    "UNet": ("tfprobunet.layers", "UNet"),
    "compare": ("tfprobunet.comparison", "compare"),
    "evaluate": ("tfprobunet.evaluation", "evaluate"),
    "export_for_serving": ("tfprobunet.serving", "export_for_serving"),
    "train": ("tfprobunet.training", "train"),
    **{module: (f"tfprobunet.{module}", None) for module in (
        "callbacks", "data", "latent", "losses", "metrics", "models", "prediction", "saving",
        "serving", "training")},
}
# Submodules that import without TensorFlow, loaded alone when asked for (the command line
# builds its parser from the catalog), and the deprecated one (it warns).
_ON_THEIR_OWN = ("baselines", "catalog")

__all__ = sorted([*_PUBLIC, *_ON_THEIR_OWN], key=lambda name: (name.islower(), name))

_loaded = False


def _load():
    """Import the library, and TensorFlow with it: every name of `_PUBLIC`, and every model
    class (registered with Keras, for `keras.saving.load_model`). Run by the first use of a
    public name; the command line runs it once its arguments are parsed."""
    global _loaded
    if _loaded:
        return
    # TensorFlow's start-up lines stay out of the output (TFPROBUNET_VERBOSE=1 shows them).
    with _console.filtered_stderr():
        _require_tf_keras()
        import importlib

        from tfprobunet import catalog

        for name, (module, attribute) in _PUBLIC.items():
            module = importlib.import_module(module)
            globals()[name] = module if attribute is None else getattr(module, attribute)
        for name in catalog.BUILTIN_MODELS:  # every class, registered for `load_model`
            catalog.model_class(name)
        # CUDA is probed when the devices are first listed, which the first operation would
        # otherwise do outside this block (its `cuInit` failure on CPU-only machines). Listing
        # physical devices leaves them configurable (memory growth, logical devices).
        import tensorflow as tf

        tf.config.list_physical_devices()
    _loaded = True


def __getattr__(name):
    """PEP 562: a public module is imported on its own (as `import tfprobunet.NAME` would); a
    public class or function loads the library (`_load`)."""
    if name in _ON_THEIR_OWN or _PUBLIC.get(name, (None, ""))[1] is None:
        import importlib

        return importlib.import_module(f"tfprobunet.{name}")
    if name in _PUBLIC:
        _load()
        return globals()[name]
    raise AttributeError(f"module 'tfprobunet' has no attribute {name!r}")
