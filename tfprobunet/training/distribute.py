"""Distribution strategies (`make_strategy`: default, mirrored, multi-worker) and
`fit_distributed`, the training loop that replaces Keras' `fit` under
`MultiWorkerMirroredStrategy`."""

import contextlib
import functools
import shutil
import signal
import tempfile

import keras
import tensorflow as tf

from tfprobunet import _cluster
from tfprobunet.defaults import STRATEGIES


def make_strategy(name, connect_timeout=_cluster.CONNECT_TIMEOUT):
    """`"default"`: no distribution. `"mirrored"`: `MirroredStrategy` over every GPU, or over
    every logical CPU device when there is no GPU (so it can be exercised on a CPU machine).
    `"multi_worker"`: `MultiWorkerMirroredStrategy`, configured by the `TF_CONFIG` variable (one
    worker without it). One strategy per process: the same name gives the same strategy.

    A multi-worker strategy must be made before TensorFlow runs anything else in the process
    (it configures collective ops at start-up): `train(strategy="multi_worker")` makes it first;
    in a script that uses TensorFlow before, call `make_strategy("multi_worker")` at its top.
    `TF_CONFIG` is checked first (a `ValueError` names what is wrong with it). Making it waits
    for every task of the cluster: if they have not all joined after `connect_timeout` seconds
    (None: no limit), one line on stderr names the tasks that never answered and the process
    is killed (`_cluster.connect_watchdog`: TensorFlow's wait holds the GIL and takes SIGTERM,
    so nothing gentler reaches it).
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "multi_worker":
        return _multi_worker(connect_timeout)
    gpus = tf.config.list_logical_devices("GPU")
    if gpus:
        return _mirrored(tuple(d.name for d in gpus), cpu=False)
    return _mirrored(tuple(d.name for d in tf.config.list_logical_devices("CPU")), cpu=True)


_multi_worker_strategy = []  # one per process, made by the first `_multi_worker` call


def _multi_worker(connect_timeout):
    if _multi_worker_strategy:
        return _multi_worker_strategy[0]
    _cluster.read_tf_config()  # a malformed TF_CONFIG: one clear error, before TensorFlow's
    try:
        with _cluster.connect_watchdog(connect_timeout):
            _multi_worker_strategy.append(tf.distribute.MultiWorkerMirroredStrategy())
        return _multi_worker_strategy[0]
    except RuntimeError as error:
        if "program startup" not in str(error):
            raise
        raise RuntimeError(
            "strategy='multi_worker' must be set up before TensorFlow runs anything else in "
            "this process (TensorFlow configures collective ops at start-up). Call "
            "tfprobunet.training.make_strategy('multi_worker') at the top of your script, "
            "before loading data or building models.") from None


def is_chief(strategy):
    """Whether this process writes the run's files: always, except on the non-chief workers of
    a multi-worker strategy (the chief is task `chief`, or worker 0 when there is none)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type:
        return True
    if resolver.task_type == "chief":
        return True
    return (resolver.task_type == "worker" and resolver.task_id == 0
            and "chief" not in resolver.cluster_spec().as_dict())


@contextlib.contextmanager
def writable_folder(workdir, chief):
    """Yield where this process writes the run's files: `workdir` on the chief, a temporary
    folder on the other workers of a multi-worker run, deleted however training ends (as TF's
    multi-worker guide prescribes)."""
    if chief:
        yield workdir
        return
    folder = tempfile.mkdtemp(prefix="tfprobunet-worker-")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def _mirrored(devices, cpu):
    # One strategy per device set and process: collective all-reduce keys restart with each new
    # strategy, and a second strategy's ops then collide with the first's ("Shape mismatch in
    # the collective instance"), e.g. in a tuner's second trial. On CPU devices, reducing to one
    # device avoids collectives altogether.
    cross_device_ops = tf.distribute.ReductionToOneDevice() if cpu else None
    return tf.distribute.MirroredStrategy(list(devices), cross_device_ops=cross_device_ops)


def _logs(model, keys):
    """The model's metric results named `keys` (what its step returned), over all replicas."""
    results = model.get_metrics_result()
    return {k: float(results[k]) for k in keys}


def fit_distributed(model, dataset, epochs, steps_per_epoch, initial_epoch=0,
                    validation_data=None, callbacks=None, verbose=1, stop=None):
    """`model.fit` for a model built under `model.distribute_strategy`, as a `strategy.run`
    loop over the model's own `train_step` (and `test_step` on `validation_data`): the same
    loss, trackers, callbacks and `History`. Keras 3's `fit` fails under
    `MultiWorkerMirroredStrategy` ("Attempt to convert a value (PerReplica...)",
    keras-team/keras#20585; Keras 3.15), which this replaces.

    `dataset` yields global batches; each worker takes its share of every batch, so one step
    over W workers is one step on the global batch in one process.

    `stop` (a `StopRequest` of `_interrupts.stop_requests`, with `StopOnSignal` among the
    callbacks): every step also sums the workers' requests, so that a signal sent to one worker
    stops them all after the same step (a worker that stopped alone would leave the others
    waiting for it in the next collective).

    Returns:
        `keras.callbacks.History`.
    """
    strategy = model.distribute_strategy
    history = keras.callbacks.History()
    callback_list = keras.callbacks.CallbackList(
        [*(callbacks or []), history], add_history=False, add_progbar=verbose != 0,
        model=model, verbose=verbose, epochs=epochs, steps=steps_per_epoch)
    batches = iter(strategy.experimental_distribute_dataset(dataset))

    def replica_step(batch, requested):
        logs = model.train_step(batch)
        context = tf.distribute.get_replica_context()
        # tf.identity places the flag on the replica's device, as all_reduce needs.
        return logs, context.all_reduce(tf.distribute.ReduceOp.SUM, tf.identity(requested))

    @tf.function
    def train_step(iterator, requested):
        return strategy.run(replica_step, args=(next(iterator), requested))

    @tf.function
    def test_step(batch):
        return strategy.run(model.test_step, args=(batch,))

    model.stop_training = False
    callback_list.on_train_begin()
    logs = {}
    for epoch in range(initial_epoch, epochs):
        model.reset_metrics()
        callback_list.on_epoch_begin(epoch)
        for step in range(steps_per_epoch):
            callback_list.on_train_batch_begin(step)
            keys, requested = train_step(batches, tf.constant(
                0.0 if stop is None or stop.signum is None else 1.0))
            logs = _logs(model, keys)
            if stop is not None:
                stop.shared = float(strategy.experimental_local_results(requested)[0]) > 0
                if stop.shared and stop.signum is None:
                    stop.signum = signal.SIGTERM  # sent to another worker
            callback_list.on_train_batch_end(step, logs)
            if model.stop_training:
                break
        if validation_data is not None:
            model.reset_metrics()
            keys = ()
            for batch in strategy.experimental_distribute_dataset(validation_data):
                keys = test_step(batch)
            logs.update({f"val_{k}": v for k, v in _logs(model, keys).items()})
        callback_list.on_epoch_end(epoch, logs)
        if model.stop_training:
            break
    callback_list.on_train_end(logs)
    return history
