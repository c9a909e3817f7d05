"""SIGINT (Ctrl-C) and SIGTERM (a cluster manager's stop) during training: recorded by
`stop_requests`, acted on at the next step boundary by `training.StopOnSignal`, which raises
`TrainingInterrupted`. Imports nothing heavy."""

import contextlib
import signal
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class TrainingInterrupted(Exception):
    """Training stopped at a step boundary because the process (or, in a multi-worker run, a
    process of the cluster) received SIGINT or SIGTERM. The checkpoints on disk are whole: the
    same call again resumes from the last one. `signum` is the signal; the command line exits
    with 128 + `signum`, as a process killed by it would."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """What `stop_requests` yields: `signum`, the first signal received (None until then), and
    `shared`: None in one process; in a multi-worker run, whether the step that just ended
    carried a request to every worker (set by `training.distribute.fit_distributed`).

    A worker acts on its own signal only once it was shared: a signal that arrives while a
    step runs is handled when the step returns, after the step sent this worker's "no
    request", so the peers learn of it only in the next step, and all stop after that one."""

    def __init__(self):
        self.signum = None
        self.shared = None

    def due(self):
        """The signal to stop on at the end of this step, or None."""
        return self.signum if self.shared in (None, True) else None


@contextlib.contextmanager
def stop_requests():
    """Within the block, SIGINT and SIGTERM set `signum` of the yielded `StopRequest` instead of
    stopping the process at once (a second signal does what it would have done). The handlers
    that were there before are put back at the end; they also replace TensorFlow's own SIGTERM
    watcher, which a multi-worker strategy installs and which swallows the signal. Outside the
    main thread, where Python cannot set handlers, signals keep their usual effect."""
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous = {s: signal.getsignal(s) for s in SIGNALS}

    def handle(signum, frame):
        if request.signum is not None:  # the second: at once
            signal.signal(signum, previous[signum] if previous[signum] is not None
                          else signal.SIG_DFL)
            signal.raise_signal(signum)
            return
        request.signum = signum

    for s in SIGNALS:
        signal.signal(s, handle)
    try:
        yield request
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
