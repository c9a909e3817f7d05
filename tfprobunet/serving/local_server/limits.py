"""`RequestLimits`: what one request may ask of the local server, checked from the shapes a
request claims before anything is parsed or run (TF Serving itself bounds neither the sample
count nor the image size; the export records limits of its own, which the signatures check)."""

import dataclasses
import math

from tfprobunet.defaults import (MAX_MESSAGE_BYTES, MAX_PIXELS, MAX_SAMPLE_BYTES,
                                 MAX_SAMPLE_PIXELS, MAX_SAMPLES)
from tfprobunet.models.checks import check_sample_bytes
from tfprobunet.serving.wire import dims, status_error

# Bytes per output value in a response: 4 in a TensorProto, up to about 20 as JSON text.
GRPC_BYTES_PER_VALUE, JSON_BYTES_PER_VALUE = 4, 20
# What a gRPC response carries beyond its values (framing, names, shapes), with a margin.
RESPONSE_OVERHEAD = 2**16
# The inputs whose first three dimensions are a request's (b, h, w): images, or what the
# `features` signature made of them (a Probabilistic U-Net's features, an SSN's mean).
_IMAGE_LIKE = ("images", "features", "mean")


@dataclasses.dataclass(frozen=True)
class RequestLimits:
    """What one request may ask of the server; beyond it, the request is refused before it runs.

    Attributes:
        max_samples: samples per image (`num_samples`, or the samples of `z`).
        max_pixels: image pixels per request, b * h * w of `images` or `features`.
        max_sample_pixels: sampled pixels per request, b * m * h * w.
        max_message_bytes: the largest gRPC message, and the largest response.
        max_sample_bytes: bytes of the per-class probabilities a request's samples take,
            b * m * h * w * K * 4 (`defaults.sample_bytes`): computed whatever the outputs
            asked for, and K classes make a sample K times dearer than a pixel.
    """

    max_samples: int = MAX_SAMPLES
    max_pixels: int = MAX_PIXELS
    max_sample_pixels: int = MAX_SAMPLE_PIXELS
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_sample_bytes: int = MAX_SAMPLE_BYTES

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"`{field.name}` must be an integer >= 1. Received: {value!r}")

    def check(self, signature, shapes, num_samples, output_names, bytes_per_value):
        """Raise INVALID_ARGUMENT for a request beyond the sample, pixel and sample-byte limits,
        and RESOURCE_EXHAUSTED for one whose response (the sum over `output_names`) would exceed
        `max_message_bytes`.

        Args:
            signature: the `SignatureDef` the request runs.
            shapes: input name -> shape, already checked against the signature's.
            num_samples: the `num_samples` input's value, or None.
            output_names: the outputs the response carries, each once.
            bytes_per_value: the response's size per output value.
        """
        key = next((k for k in _IMAGE_LIKE if k in shapes), None)
        if key is None:
            return
        b, h, w = shapes[key][:3]
        if b * h * w > self.max_pixels:
            raise status_error("INVALID_ARGUMENT", (
                f"`{key}` holds {b} x {h} x {w} = {b * h * w} pixels, above max_pixels = "
                f"{self.max_pixels} (a limit of this server): send fewer or smaller images per "
                "request (`tfprobunet serve --max-pixels` raises it)."))
        m = None
        if num_samples is not None:
            m, what = max(int(num_samples), 0), "`num_samples` is"
        elif "z" in shapes:
            m, what = shapes["z"][1], "`z` holds samples per image:"
        if m is not None and m > self.max_samples:
            raise status_error("INVALID_ARGUMENT", (
                f"{what} {m}, above max_samples = {self.max_samples} (a limit of this server): "
                "ask in several requests (`tfprobunet serve --max-samples` raises it)."))
        if m is not None and b * m * h * w > self.max_sample_pixels:
            raise status_error("INVALID_ARGUMENT", (
                f"The request asks for {b} x {m} x {h} x {w} = {b * m * h * w} sample pixels, "
                f"above max_sample_pixels = {self.max_sample_pixels} (a limit of this server): "
                "ask for fewer samples or images per request (`tfprobunet serve "
                "--max-sample-pixels` raises it)."))
        k = _num_classes(signature)
        if m is not None and k is not None:
            try:  # the library's words for it
                check_sample_bytes(b, m, h, w, k, self.max_sample_bytes, hint=(
                    "per request; max_sample_bytes is a limit of this server: `tfprobunet serve "
                    "--max-sample-bytes` raises it"))
            except ValueError as error:
                raise status_error("INVALID_ARGUMENT", str(error)) from None
        # Unknown output dimensions are, in order, b, m (when sampling), h and w.
        sizes = [b, m, h, w] if m is not None else [b, h, w]
        values = sum(math.prod(sizes[i] if d == -1 and i < len(sizes) else max(d, 1)
                               for i, d in enumerate(dims(signature.outputs[name])))
                     for name in output_names)
        if values * bytes_per_value + RESPONSE_OVERHEAD > self.max_message_bytes:
            raise status_error("RESOURCE_EXHAUSTED", (
                f"The response would take about {values * bytes_per_value / 2**20:.0f} MiB, "
                f"above max_message_bytes = {self.max_message_bytes} "
                f"({self.max_message_bytes / 2**20:.0f} MiB, a limit of this server): ask for "
                "fewer samples or images per request, or for masks alone (gRPC "
                "`output_filter=['masks']`)."))


def _num_classes(signature):
    """K, the last dimension of the signature's `probabilities (b, m, h, w, K)` output, or None
    for a signature that does not sample."""
    if "probabilities" not in signature.outputs:
        return None
    k = dims(signature.outputs["probabilities"])[-1:]
    return k[0] if k and k[0] > 0 else None
