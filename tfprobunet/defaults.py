"""Names, training recipes and request limits shared by the library and the command line.

Importable without TensorFlow: `tfprobunet --help` builds its parser from this module alone.
The modules that use these values import them from here (`training.PRESETS`,
`serving.export.MAX_SAMPLES`, ... are the same objects).
"""

# The names `train(model=...)`, `compare` and the CLI know the models by (`models.MODELS`).
MODEL_NAMES = ("probunet", "dropout", "ensemble", "mheads", "i2ivae")
# The datasets `tfprobunet.data.load` knows by name.
DATASETS = ("flips", "graders", "lidc", "lidc-pickle", "cityscapes", "npz", "folder")
STRATEGIES = ("default", "mirrored", "multi_worker")
SCHEDULES = ("constant", "piecewise", "cosine", "wsd")

# Named training recipes: `tfprobunet train --preset NAME` (flags override), or from Python
# `train(workdir, **preset(NAME, epochs=...))`. See the README's ablation for the evidence.
_CPU = dict(num_channels=[16, 32, 64], convs_per_block=2, latent_dim=8, fcomb_channels=64,
            beta=1.0, beta_warmup_steps=2000, learning_rate=1e-3, schedule="wsd", batch_size=16)
PRESETS = {
    "cpu": dict(
        description="for small images on a CPU, runs of ~6000 steps (flips at 32x32: 6 "
                    "minutes on 2 cores): a small U-Net with a 64-channel f_comb, latent 8, KL "
                    "warm-up over 2000 steps, Adam 1e-3 with warm-up, stable phase and cosine "
                    "decay (wsd), batch 16",
        **_CPU),
    "cpu-energy": dict(
        description="the cpu preset plus the energy term on 4 prior samples (energy_weight "
                    "1000; not in the paper): for binary masks whose graders disagree on "
                    "whether there is a lesion (graders at 64x64); a step costs about twice "
                    "the cpu preset's",
        **_CPU, energy_weight=1000.0, energy_samples=4),
    # Where each value comes from: U-Net widths, the first four of the official Cityscapes
    # configuration's seven (training/prob_unet_config.py: 32, 64, 128, 192, 192, 192, 192);
    # 3 convs per block, beta 1, Adam 1e-4 and the piecewise schedule, the same file; latent 6,
    # the same file and the paper's section 2 ("N = 6, which performed best"). Four levels and
    # batch 8 are choices made here (that file's batch: 10). The paper gives its LIDC training
    # schedule in its appendix H.1, which this project has not checked.
    "paper": dict(
        description="the default model (U-Net [32, 64, 128, 192], 3 convs per block, latent "
                    "6, beta 1) with Adam 1e-4 and the official Cityscapes configuration's "
                    "piecewise schedule, batch 8 (chosen here); not checked against the "
                    "paper's LIDC schedule (its appendix H.1); slow to calibrate on CPU",
        num_channels=[32, 64, 128, 192], convs_per_block=3, latent_dim=6, beta=1.0,
        learning_rate=1e-4, schedule="piecewise", batch_size=8),
}

# Request limits recorded in an export (TF Serving itself bounds neither): the sample count per
# request, image pixels per request (b * h * w; the U-Net's activations take about 1 KB per
# pixel on the default configuration: 2**20 pixels, 1 GB) and sampled pixels per request
# (b * m * h * w; about 25 bytes each in f_comb: 2**24, 1000 samples of 128 x 128, 0.4 GB).
MAX_SAMPLES = 1000
MAX_PIXELS = 2**20
MAX_SAMPLE_PIXELS = 2**24
# gRPC message sizes, both ways (TF Serving: --grpc_channel_arguments). A response of 1000
# samples of one 128 x 128 image with 2 classes is 0.2 GB.
MAX_MESSAGE_BYTES = 2**28
# REST bodies are parsed into Python lists of floats, about 34 times their size in memory: their
# limit is lower than gRPC messages' (32 MiB: 64 images of 128 x 128 x 3 as JSON).
MAX_BODY_BYTES = 2**25


def check_number(name, value, minimum=None, maximum=None, *, above=None, integer=False,
                 example=None):
    """Return `value` if it is a finite number (an integer if `integer`) with `minimum <= value
    <= maximum` and `value > above` (each bound optional), else raise `ValueError` saying what
    was received and what would work: `nan`, `inf` and out-of-range settings are refused before
    they reach an optimizer or a file."""
    import math
    import numbers

    kind = numbers.Integral if integer else numbers.Real
    ok = isinstance(value, kind) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (minimum is None or value >= minimum) and (maximum is None or value <= maximum)
    ok = ok and (above is None or value > above)
    if not ok:
        bounds = [f"> {above}" if above is not None else None,
                  f">= {minimum}" if minimum is not None else None,
                  f"<= {maximum}" if maximum is not None else None]
        wanted = " and ".join(b for b in bounds if b)
        raise ValueError(f"`{name}` must be a finite {'integer' if integer else 'number'}"
                         f"{' ' + wanted if wanted else ''}"
                         f"{f' (e.g. {example})' if example is not None else ''}. "
                         f"Received: {name}={value!r}")
    return value


# The numeric model arguments and their ranges (see `check_number`): the models' constructors
# check those they take, and `train` checks them before it writes anything. None, where an
# argument's default is None, stays allowed.
MODEL_NUMBERS = {
    "weight_decay": dict(minimum=0.0, maximum=1.0, example="1e-5"),
    "beta": dict(minimum=0.0, maximum=1e6, example=1.0),
    "geco_target": dict(above=0.0, example=0.01),
    "geco_rate": dict(above=0.0, maximum=10.0, example=0.01),
    "energy_weight": dict(minimum=0.0, maximum=1e9, example=1000),
}


def check_model_numbers(arguments):
    """Check the `MODEL_NUMBERS` among the dict `arguments` (other keys and None values are
    left alone); raise `ValueError` as `check_number` does."""
    for name, bounds in MODEL_NUMBERS.items():
        if arguments.get(name) is not None:
            check_number(name, arguments[name], **bounds)
