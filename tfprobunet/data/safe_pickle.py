"""A restricted unpickler for pickles of numpy arrays, such as the `data_lidc.pickle` of the
popular PyTorch port of the Probabilistic U-Net (`tfprobunet.data.lidc.pickle_dataset` reads it).

`read_pickle(path)` builds numpy arrays of numbers or strings, their dtypes and scalars, and the
plain containers pickle itself makes, and nothing else: no other class is ever looked up, so no
`__reduce__` payload can run. It allocates no more array bytes than the file holds (plus
`ARRAY_BYTES_SLACK`): a truncated or forged file is refused before numpy allocates anything.
"""

import functools
import io
import math
import operator
import pickle
import re

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asks to build an object other than numpy arrays and plain containers, or more
    array bytes than the file holds."""


# An intact pickle stores the bytes of every array it holds, so its arrays fit in the file; the
# slack covers rounding in tiny files.
ARRAY_BYTES_SLACK = 1 << 16
# bool, integers, floats, complex, bytes and str: no objects, records or sub-arrays.
_PLAIN_KINDS = "biufcSU"


class _NumpyUnpickler(pickle._Unpickler):
    """Builds only numpy arrays of numbers or strings, their dtypes and scalars, and the plain
    containers pickle itself makes (dict, list, tuple, str, bytes, numbers): no other class, so
    no `__reduce__` payload can run. And no more array bytes, all arrays together, than the file
    holds (plus `ARRAY_BYTES_SLACK`): shapes are counted before numpy allocates.

    The pure-Python unpickler, not the C one: its memo is a dict (the C one allocates a table as
    long as the largest memo index, 16 GB for a 10-byte pickle), and its BUILD opcode, through
    which numpy sets array data and dtype item sizes, can be checked.
    """

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "scalar"),
        ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),  # protocol 2 writes bytes as _codecs.encode(str, 'latin1')
    }

    def __init__(self, data, source):
        super().__init__(io.BytesIO(data))
        self.source = source
        self.file_size = len(data)
        self.limit = len(data) + ARRAY_BYTES_SLACK
        self.built = 0  # array bytes so far
        self.unset = {}  # id -> array from _reconstruct still waiting for its data (BUILD)
        self.ndarray = self._ndarray  # one object, recognised by identity

    def _unsafe(self, what):
        return UnsafePickleError(
            f"Refusing to load {self.source}: it {what}. The LIDC pickle reader builds only numpy "
            "arrays of numbers or strings and plain containers (dict, list, str), and no more "
            "array bytes than the file holds. Nothing from the file was run. If you trust the "
            "file, convert it to .npz yourself.")

    def find_class(self, module, name):
        # Pickles written by numpy 1.x name numpy.core, numpy 2 numpy._core.
        canonical = re.sub(r"^numpy\.core\b", "numpy._core", module)
        if (canonical, name) not in self._ALLOWED:
            raise self._unsafe(f"asks to build `{module}.{name}`")
        if name == "ndarray":  # only as _reconstruct's argument: called, it allocates any shape
            return self.ndarray
        checked = getattr(self, f"_checked_{name.strip('_')}")
        return functools.partial(checked, super().find_class(canonical, name))

    def _ndarray(self, *args, **kwargs):
        raise self._unsafe("calls `numpy.ndarray(...)`, which allocates an array of any shape "
                           "(numpy's pickles only name it for _reconstruct)")

    def _plain(self, dtype, asked):
        if (not isinstance(dtype, np.dtype) or dtype.kind not in _PLAIN_KINDS
                or dtype.fields is not None or dtype.subdtype is not None):
            raise self._unsafe(f"asks for numpy dtype {asked!r:.100}, not one of numbers or "
                               "strings (no objects, records or sub-arrays)")
        return dtype

    def _count(self, shape, dtype):
        """`shape` as a tuple, its bytes counted against the limit before anything allocates."""
        try:
            shape = tuple(map(operator.index, shape if isinstance(shape, (tuple, list))
                              else (shape,)))
        except TypeError:
            shape = None
        if shape is None or any(n < 0 for n in shape):
            raise self._unsafe(f"asks for an array of shape {shape!r:.100}")
        nbytes = math.prod(shape) * dtype.itemsize  # Python integers: no overflow
        if self.built + nbytes > self.limit:
            raise UnsafePickleError(
                f"Refusing to load {self.source}: it asks for an array of shape {shape} {dtype} "
                f"({nbytes:,} bytes), but a {self.file_size:,}-byte file can hold at most "
                f"{self.limit:,} bytes of arrays ({self.built:,} built so far). An intact pickle "
                "stores the bytes of its arrays: this one is truncated or forged. Download it "
                "again, or save it again where it was made. Nothing was allocated.")
        self.built += nbytes
        return shape

    def _checked_dtype(self, make, obj, align=False, copy=False):
        # Always a new dtype (numpy's pickles ask for one): BUILD then sets its state in place.
        if not isinstance(obj, str):
            raise self._unsafe(f"asks for a numpy dtype made from {obj!r:.100}")
        return self._plain(make(obj, bool(align), True), obj)

    def _checked_reconstruct(self, make, subtype, shape, typecode):
        if subtype is not self.ndarray:
            raise self._unsafe(f"asks numpy's _reconstruct for a {subtype!r:.100}")
        if not isinstance(typecode, np.dtype):
            typecode = self._checked_dtype(
                np.dtype, typecode.decode("latin1") if isinstance(typecode, bytes) else typecode)
        dtype = self._plain(typecode, typecode)
        array = make(np.ndarray, self._count(shape, dtype), dtype)
        self.unset[id(array)] = array
        return array

    def _checked_frombuffer(self, make, buffer, dtype, shape, order, *axis_order):
        # Only pickle's own bytes: numpy would view any buffer, say an array's the pickle resizes.
        if not isinstance(buffer, (bytes, bytearray)):
            raise self._unsafe(f"asks numpy's _frombuffer to view a {type(buffer).__name__}")
        dtype = self._plain(dtype, dtype)
        return make(buffer, dtype, self._count(shape, dtype), order, *axis_order)

    def _checked_scalar(self, make, dtype, data):
        self._count((), self._plain(dtype, dtype))
        return make(dtype, data)

    def _checked_encode(self, make, text, encoding="utf-8", errors="strict"):
        # Latin-1 makes one byte per character; other codecs (hex, base64) grow what they encode.
        if not isinstance(text, str) or encoding != "latin1":
            raise self._unsafe(f"asks for `_codecs.encode({type(text).__name__}, {encoding!r:.50})`"
                               " (protocol 2 pickles use only 'latin1', on text)")
        return make(text, encoding, errors)

    def load_build(self):
        """BUILD: numpy sets an array's shape and data, or a dtype's byte order, this way."""
        state = self.stack.pop()
        target = self.stack[-1]
        if isinstance(target, np.ndarray) and self.unset.pop(id(target), None) is target:
            # (version, shape, dtype, is_fortran, data); numpy's version 0 leaves out the version.
            if not isinstance(state, tuple) or len(state) not in (4, 5):
                raise self._unsafe(f"asks to set an array's state to {state!r:.100}")
            self._count(state[-4], self._plain(state[-3], state[-3]))
            target.__setstate__(state)
        elif isinstance(target, np.dtype):
            # Arrays already made with this dtype would read past their data if it grew. (A
            # plain dtype is all in its .str; np.dtype(target, copy=True) may return target.)
            trial = np.dtype(self._plain(target, target).str, False, True)
            trial.__setstate__(state)
            if self._plain(trial, trial).itemsize != target.itemsize:
                raise self._unsafe(f"asks to change the item size of numpy dtype {target} from "
                                   f"{target.itemsize} to {trial.itemsize} bytes")
            target.__setstate__(state)
        else:
            raise self._unsafe(f"asks to set the state of a {type(target).__name__} (only new "
                               "numpy arrays and dtypes have one)")

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build


def read_pickle(path):
    """Load a pickle with `_NumpyUnpickler`: numpy arrays and plain containers, and no more array
    bytes than the file holds. Raises `UnsafePickleError` for anything else, and
    `pickle.UnpicklingError` naming the file if it is truncated or damaged."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        return _NumpyUnpickler(data, path).load()
    except UnsafePickleError:
        raise
    except Exception as error:  # a truncated or damaged file: say which
        raise pickle.UnpicklingError(
            f"Cannot read {path}: {type(error).__name__}: {error}. It is not a complete pickle "
            "of numpy arrays: download it again.") from error
