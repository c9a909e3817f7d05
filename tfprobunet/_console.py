"""What the library's entry points print: not TensorFlow's start-up lines, and progress bars only
where they can be drawn. Imports nothing heavy: `tfprobunet/__init__.py` uses it before
TensorFlow is imported.

TensorFlow's C++ code writes its start-up lines (the oneDNN notice, CUDA probes and `cuInit`
failures on CPU-only machines, absl's pre-initialisation warning, the notices of the first graphs
it runs) straight to file descriptor 2,
some of them before `TF_CPP_MIN_LOG_LEVEL` is read. `filtered_stderr()` routes descriptor 2
through a pipe while it is active: a thread passes every line on to the real stderr at once,
except those matching `NOISE`, which it keeps in `hidden` (`tfprobunet --debug ...` prints
them). `TFPROBUNET_VERBOSE=1` turns the filter off. `hold_back_tensorflow_startup()` (run by
`import tfprobunet`) applies the filter to the first import of TensorFlow, whoever makes it.
"""

import contextlib
import os
import re
import sys
import threading

VERBOSE_VARIABLE = "TFPROBUNET_VERBOSE"

NOISE = re.compile(
    rb"oneDNN custom operations are on"
    rb"|Could not find cuda drivers|cudart_stub\.cc|failed call to cuInit|cuda_platform\.cc"
    rb"|cuda_diagnostics|kernel driver does not appear to be running"
    rb"|All log messages before absl::InitializeLog\(\) is called"
    rb"|Unable to register cu(DNN|FFT|BLAS) factory|computation_placer\.cc"
    rb"|TensorFlow binary is optimized to use available CPU instructions"
    rb"|rebuild TensorFlow with the appropriate compiler flags"
    # Every other line of TensorFlow's C++ logging (info, warning, error; not FATAL, which
    # precedes a crash): notices of the first graphs run (MLIR's pass switch, oneDNN's dtype
    # fallbacks) and the like. What goes wrong reaches Python as an exception.
    rb"|^[IWE]\d{4} \d\d:\d\d:[\d.]+ +\d+ [\w/.+-]+:\d+\] ")

hidden = []  # the lines held back, as text
_lock = threading.Lock()
_real_stderr = None  # descriptor 2 as it was, while `filtered_stderr` is active


def real_stderr():
    """The descriptor of the real stderr: descriptor 2, or, while `filtered_stderr` is active,
    the one it saved. For writers that cannot wait for the filter's thread (a watchdog process
    writing while this process is stuck in C++ code that holds the GIL)."""
    return 2 if _real_stderr is None else _real_stderr


def verbose():
    """Whether the user asked to see everything (`TFPROBUNET_VERBOSE` set, not 0)."""
    return os.environ.get(VERBOSE_VARIABLE, "0") not in ("", "0")


def _forward(read, out):
    held_back = False  # the last line was: its indented continuation lines are too
    with os.fdopen(read, "rb", buffering=0) as pipe:
        while chunk := pipe.read(1 << 16):
            for line in chunk.splitlines(keepends=True):
                # A hidden message's continuation, e.g. the `\t [[{{node Assert_4/Assert}}]]`
                # of the warning each failed assert op logs (a refused serving request).
                held_back = bool(NOISE.search(line)) or (held_back and line[:1] in (b"\t", b" "))
                if held_back:
                    hidden.append(line.decode(errors="replace").rstrip("\n"))
                else:
                    try:
                        os.write(out, line)
                    except OSError:
                        pass
    os.close(out)


@contextlib.contextmanager
def filtered_stderr():
    """Hold TensorFlow's start-up lines back from file descriptor 2 within the block; pass
    everything else on as it comes. Does nothing when verbose, when nested, or without a
    descriptor 2."""
    if verbose() or not _lock.acquire(blocking=False):
        yield
        return
    try:
        os.fstat(2)
    except OSError:
        _lock.release()
        yield
        return
    global _real_stderr
    sys.stderr.flush()
    saved = os.dup(2)
    _real_stderr = saved
    read, write = os.pipe()
    os.dup2(write, 2)
    os.close(write)
    thread = threading.Thread(target=_forward, args=(read, os.dup(saved)), daemon=True,
                              name="tfprobunet-stderr")
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # drops the pipe's last write end: the thread drains it and ends
        _real_stderr = None
        os.close(saved)
        thread.join(timeout=2.0)  # a child process still holding the pipe delays its end
        _lock.release()


class _QuietTensorFlowLoader:
    """The loader of `tensorflow`, run inside `filtered_stderr`, then listing the physical
    devices there (their CUDA probe would print its `cuInit` failure at the first operation);
    every other attribute is the real loader's."""

    def __init__(self, loader):
        self._loader = loader

    def __getattr__(self, name):
        return getattr(self._loader, name)

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        with filtered_stderr():
            self._loader.exec_module(module)
            module.config.list_physical_devices()


class _QuietTensorFlowFinder:
    """On `sys.meta_path` (`hold_back_tensorflow_startup`): finds `tensorflow` as the other
    finders do, then loads it with `_QuietTensorFlowLoader`; removes itself once used."""

    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name != "tensorflow":
            return None
        sys.meta_path.remove(cls)
        import importlib.util

        spec = importlib.util.find_spec(name)
        if spec is not None and spec.loader is not None and not verbose():
            spec.loader = _QuietTensorFlowLoader(spec.loader)
        return spec


def hold_back_tensorflow_startup():
    """Make the first import of TensorFlow in this process, whoever imports it (the library,
    Keras or your code), hold its start-up lines back as `filtered_stderr` does: what `import
    tfprobunet` does, without importing TensorFlow itself. Does nothing once TensorFlow is
    imported."""
    if "tensorflow" not in sys.modules and _QuietTensorFlowFinder not in sys.meta_path:
        sys.meta_path.insert(0, _QuietTensorFlowFinder)


def progress_verbosity(verbose=None):
    """Keras' `verbose` for the entry points: `verbose` if given, else the progress bar (1) on a
    terminal or in a notebook and one line per epoch (2) otherwise, e.g. when the output goes to
    a log file (whose progress bars would be escape codes); `train` and `tune` add the step
    lines of `tfprobunet.callbacks.ProgressLog` to the latter."""
    if verbose is not None:
        return verbose
    return 1 if interactive() else 2


def interactive():
    """Whether the output is seen as it is drawn: standard output is a terminal, or this process
    is a notebook's kernel."""
    return in_notebook() or (hasattr(sys.stdout, "isatty") and sys.stdout.isatty())


def in_notebook():
    """Whether this process is a running Jupyter (or Colab) kernel: IPython's shell has a
    kernel. ipykernel merely imported (by a notebook client, a test) is not enough."""
    ipython = sys.modules.get("IPython")
    shell = getattr(ipython, "get_ipython", lambda: None)()
    return getattr(shell, "kernel", None) is not None
