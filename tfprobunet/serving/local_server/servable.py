"""`Servable`: one version of a model, run the way TF Serving runs it: its SavedModel loaded into
a TF1 session (`tf.compat.v1.saved_model.loader.load`, tag `serve`), fed and fetched by the
tensor names of its SignatureDef, never through the Python objects.

Loading a SavedModel runs its init ops (`main_op`), as TF Serving's loader does: the base path
must be as trusted as the code the server runs.
"""

import itertools
import os

import numpy as np
import tensorflow as tf

from tfprobunet.saving import NonFiniteWeightsError
from tfprobunet.serving.local_server.limits import GRPC_BYTES_PER_VALUE
from tfprobunet.serving.wire import (INIT_OP_SIGNATURE, dims, op_error_message, status_error,
                                     status_name)

# The most names a refusal lists of a request's inputs.
LISTED_NAMES = 20


class Servable:
    """One version of a model: a TF1 session on its SavedModel, run by SignatureDef tensor names.

    Args:
        name: the model's name. version: its integer version.
        path: the version folder (`<base_path>/<name>/<version>`).

    Raises whatever the loader raises for a folder that is not a complete SavedModel, and
    `NonFiniteWeightsError` (a ValueError) if its variables hold NaN or Inf: what a diverged run
    leaves, whose answers would mean nothing.
    """

    def __init__(self, name, version, path):
        self.name, self.version, self.path = name, version, path
        self.graph = tf.Graph()
        self.session = tf.compat.v1.Session(graph=self.graph)
        tf_logger = tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel("ERROR")  # the TF1 loader's deprecation notice: we mean to use it
        try:
            with self.graph.as_default():
                meta_graph = tf.compat.v1.saved_model.loader.load(self.session, ["serve"], path)
            # After the load, whose errors say more about a folder that is not a SavedModel.
            _check_finite_variables(name, version, path)
        except BaseException:
            self.session.close()
            raise
        finally:
            tf_logger.setLevel(level)
        self.signatures = {k: v for k, v in meta_graph.signature_def.items()
                           if k != INIT_OP_SIGNATURE}

    def run(self, signature_name, inputs, output_filter=(), limits=None,
            bytes_per_value=GRPC_BYTES_PER_VALUE):
        """Feed `inputs` (name -> ndarray) to the signature's tensors.

        Args:
            signature_name: e.g. `"serving_default"`.
            inputs: name -> ndarray.
            output_filter: the outputs to fetch; empty: all.
            limits: a `RequestLimits` checked before running, or None.
            bytes_per_value: the response's size per value, for `limits.max_message_bytes`.

        Returns:
            name -> ndarray. Raises `ServingError` with TF Serving's status codes.
        """
        signature = self.signature(signature_name)
        inputs = {**self.defaults(signature, inputs), **inputs}
        self.check_inputs(signature, {k: (tf.dtypes.as_dtype(v.dtype), list(v.shape))
                                      for k, v in inputs.items()})
        names = self.output_names(signature, output_filter)
        if limits is not None:
            num_samples = inputs["num_samples"] if "num_samples" in inputs else None
            limits.check(signature, {k: v.shape for k, v in inputs.items()}, num_samples, names,
                         bytes_per_value)
        feed = {signature.inputs[k].name: v for k, v in inputs.items()}
        try:
            fetched = self.session.run([signature.outputs[k].name for k in names], feed)
        except tf.errors.OpError as e:
            code = status_name(e.error_code)
            if code == "INTERNAL":  # not a check of ours: the server's trouble, not the client's
                raise
            raise status_error(code, op_error_message(e)) from None
        return dict(zip(names, fetched))

    def signature(self, name):
        """The `SignatureDef` named `name`; FAILED_PRECONDITION if there is none."""
        if name not in self.signatures:
            raise status_error("FAILED_PRECONDITION", (
                f"Serving signature key \"{name}\" not found. Signatures: "
                f"{sorted(self.signatures)}."))
        return self.signatures[name]

    @staticmethod
    def defaults(signature, sent):
        """The signature's default values (its `defaults`, as TF Serving fills them in) of the
        inputs not in `sent`: name -> ndarray."""
        return {k: tf.make_ndarray(v) for k, v in signature.defaults.items() if k not in sent}

    @staticmethod
    def check_names(signature, sent):
        """INVALID_ARGUMENT unless the input names `sent` (a sized iterable, e.g. a request's
        `inputs` map) are the signature's, those with defaults left out or not. A request may
        hold millions of names: they are only read when there are not more of them than the
        signature has inputs, and the message lists at most `LISTED_NAMES` of them."""
        expected = set(signature.inputs)
        if len(sent) <= len(expected):
            names = set(sent)
            extra, missing = names - expected, expected - names - set(signature.defaults)
        else:  # too many: a few of those that cannot be the signature's, without reading all
            extra = set(itertools.islice((k for k in sent if k not in expected), LISTED_NAMES))
            names, missing = None, set()
        if not extra and not missing:
            return
        listed = sorted(names) if names is not None else sorted(extra) + ["..."]
        raise status_error("INVALID_ARGUMENT", (
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{','.join(listed)}}}) != len({{{','.join(sorted(expected))}}}). "
            f"Sent extra: {{{','.join(sorted(extra))}}}. Missing but required: "
            f"{{{','.join(sorted(missing))}}}."))

    @classmethod
    def check_inputs(cls, signature, specs):
        """INVALID_ARGUMENT unless `specs` (input name -> (tf.DType, shape)) has the signature's
        names (those with defaults may be left out), dtypes and compatible shapes: checked
        before any tensor is parsed."""
        cls.check_names(signature, specs)
        for key, (dtype, shape) in specs.items():
            info = signature.inputs[key]
            expected_dtype = tf.dtypes.as_dtype(info.dtype)
            if dtype != expected_dtype:
                raise status_error("INVALID_ARGUMENT", (
                    f"Expects input `{key}` to be {expected_dtype.name} but {dtype.name} is "
                    "provided."))
            expected_dims = dims(info)
            if not info.tensor_shape.unknown_rank and (
                    len(expected_dims) != len(shape)
                    or any(d not in (-1, v) for d, v in zip(expected_dims, shape))):
                raise status_error("INVALID_ARGUMENT", (
                    f"Input `{key}` has shape {list(shape)}, which is not compatible with the "
                    f"signature's {expected_dims} (-1: any size)."))
        # Per-image inputs (a free batch dimension and more) must agree on the batch size.
        batches = {key: shape[0] for key, (_, shape) in sorted(specs.items())
                   if len(dims(signature.inputs[key])) >= 2
                   and dims(signature.inputs[key])[0] == -1}
        if len(set(batches.values())) > 1:
            (first, size), *others = batches.items()
            other, other_size = next((k, b) for k, b in others if b != size)
            raise status_error("INVALID_ARGUMENT", (
                f"`{first}` and `{other}` must have the same batch size; received {size} and "
                f"{other_size}."))

    @staticmethod
    def output_names(signature, output_filter=()):
        """The outputs a request fetches: `output_filter`'s (a sized iterable, e.g. a request's
        repeated field), checked, or all of them. INVALID_ARGUMENT, as TF Serving answers, for
        an unknown or repeated name, and for more names than the signature has outputs before
        any is read: a 63 MB request naming `masks` 9 million times once took 5.9 GB."""
        outputs = signature.outputs
        if len(output_filter) > len(outputs):
            raise status_error("INVALID_ARGUMENT", (
                f"output_filter names {len(output_filter)} outputs; this signature has "
                f"{len(outputs)}, {{{','.join(sorted(outputs))}}}: name each at most once."))
        names = []
        for alias in output_filter:
            if alias not in outputs:
                raise status_error("INVALID_ARGUMENT", (
                    f"output tensor alias not found in signature: {alias} Outputs expected to "
                    f"be in the set {{{','.join(sorted(outputs))}}}."))
            if alias in names:
                raise status_error("INVALID_ARGUMENT",
                                   f"duplicate output tensor alias: {alias}")
            names.append(alias)
        return names or sorted(outputs)

    def close(self):
        self.session.close()


def _check_finite_variables(name, version, path):
    """Raise `NonFiniteWeightsError` if a floating-point variable in the checkpoint of the
    SavedModel at `path` holds NaN or Inf, naming how many and the first (by the name the
    checkpoint records for it)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    prefix = os.path.join(path, "variables", "variables")
    if not tf.io.gfile.exists(prefix + ".index"):  # a model without variables
        return
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    floats = sorted(k for k, dtype in dtypes.items() if dtype.is_floating)
    bad = [k for k in floats if not np.all(np.isfinite(reader.get_tensor(k)))]
    if not bad:
        return
    names = {}
    if "_CHECKPOINTABLE_OBJECT_GRAPH" in dtypes:
        graph = trackable_object_graph_pb2.TrackableObjectGraph.FromString(
            reader.get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
        names = {a.checkpoint_key: a.full_name for node in graph.nodes for a in node.attributes}
    raise NonFiniteWeightsError(
        f"Version {version} of model {name!r} has non-finite (NaN or infinite) values in "
        f"{len(bad)} of its {len(floats)} variables, e.g. {names.get(bad[0], bad[0])}: it comes "
        "from a run that diverged, and its answers would mean nothing. Export a model trained "
        "again, or from an earlier checkpoint, as a new version.")
