"""Names, request limits and number checks shared by the library and the command line.

Importable without TensorFlow: `tfprobunet --help` builds its parser from this module, the
catalog (`tfprobunet.catalog`: the names of models, datasets, splits and metrics) and the
TensorFlow-free `models/presets.py`. The modules that use these values import them from here
(`serving.export.MAX_SAMPLES`, ... are the same objects).
"""

# The names of models, datasets, splits and metrics live in `tfprobunet.catalog`.
STRATEGIES = ("default", "mirrored", "multi_worker")
SCHEDULES = ("constant", "piecewise", "cosine", "wsd")
# `train(mixed_precision=...)`: Keras dtype policies (None or "float32": float32), or "auto":
# mixed_bfloat16 on CPUs with AMX or AVX-512-BF16 and no GPU, float32 elsewhere
# (`tfprobunet.training.precision`; not the presets' choice: docs/results/bf16).
MIXED_PRECISION = (None, "float32", "auto", "mixed_float16", "mixed_bfloat16")

# Seeds become int32 tensors (the pipeline's, the stateless draws'); a multi-worker run waits at
# most this many seconds for its cluster (`connect_timeout`).
MAX_SEED = 2**31 - 1
MAX_CONNECT_TIMEOUT = 3600.0

# Request limits recorded in an export (TF Serving itself bounds neither): the sample count per
# request, image pixels per request (b * h * w; the U-Net's activations take about 1 KB per
# pixel on the default configuration: 2**20 pixels, 1 GB) and sampled pixels per request
# (b * m * h * w; about 25 bytes each in f_comb: 2**24, 1000 samples of 128 x 128, 0.4 GB).
MAX_SAMPLES = 1000
MAX_PIXELS = 2**20
MAX_SAMPLE_PIXELS = 2**24
# Bytes of the per-class probabilities a request's samples take, b * m * h * w * K * 4 (float32):
# what a sample costs grows with the class count K, which the pixel limits do not see. 2**29
# (512 MiB): 1000 samples of 128 x 128 with up to 8 classes; 32 samples with 255 classes.
MAX_SAMPLE_BYTES = 2**29
# gRPC message sizes, both ways (TF Serving: --grpc_channel_arguments). A response of 1000
# samples of one 128 x 128 image with 2 classes is 0.2 GB.
MAX_MESSAGE_BYTES = 2**28
# REST bodies are parsed into Python lists of floats, about 34 times their size in memory: their
# limit is lower than gRPC messages' (32 MiB: 64 images of 128 x 128 x 3 as JSON).
MAX_BODY_BYTES = 2**25
# The local server's queues: REST connections the kernel queues before they are accepted
# (http.server's default, 5, reset 17 % of 200 concurrent clients), REST requests in flight
# (being read, waiting for a worker or answered) and gRPC calls in flight (grpc.server's
# `maximum_concurrent_rpcs`), beyond which a request is answered 503 or RESOURCE_EXHAUSTED at
# once.
REST_BACKLOG, REST_QUEUE, GRPC_QUEUE = 128, 64, 64
# TF Serving's versions are int64.
MAX_VERSION = 2**63 - 1


def sample_bytes(images, samples, height, width, num_classes):
    """Bytes of the float32 probabilities of `samples` segmentations of each of `images` images of
    `height` x `width` with `num_classes` classes: what `MAX_SAMPLE_BYTES` bounds."""
    return 4 * int(images) * int(samples) * int(height) * int(width) * int(num_classes)


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


# The categorical diffusion's (`ccdm`) noise schedules, and its most time steps (the
# reference's 250; its sampler reads a step count above 10000 as "skip steps", so it has none
# above that either).
NOISE_SCHEDULES = ("cosine", "linear")
MAX_TIME_STEPS = 10000
# The Mixture of Stochastic Experts' (`mose`) transport costs: the reference's LIDC and
# Cityscapes ones.
MOSE_COSTS = ("iou", "ce")

# The numeric model arguments and their ranges (see `check_number`): the models' constructors
# check those they take, and `train` checks them before it writes anything. None, where an
# argument's default is None, stays allowed.
MODEL_NUMBERS = {
    "weight_decay": dict(minimum=0.0, maximum=1.0, example="1e-5"),
    "beta": dict(minimum=0.0, maximum=1e6, example=1.0),
    "geco_target": dict(above=0.0, example=0.01),
    "geco_rate": dict(above=0.0, maximum=10.0, example=0.01),
    "energy_weight": dict(minimum=0.0, maximum=1e9, example=1000),
    "gamma": dict(above=0.0, maximum=1.0, example=0.5),
}


def check_model_numbers(arguments):
    """Check the `MODEL_NUMBERS` among the dict `arguments` (other keys and None values are
    left alone); raise `ValueError` as `check_number` does."""
    for name, bounds in MODEL_NUMBERS.items():
        if arguments.get(name) is not None:
            check_number(name, arguments[name], **bounds)
