"""A restricted unpickler for the pickles people download: CIFAR-10 batches and model-zoo weights (MSRA / Caffe2
`R-50.pkl`, detectron2's `model_final_*.pkl`). It builds plain containers, strings, bytes and numpy arrays of
numbers or fixed-size strings, and nothing else: no code in the file runs, and no array larger than its bytes is
allocated."""

from __future__ import annotations

import os
import pickle
from typing import Any, ClassVar

import numpy as np

from engine.errors import UserError


class _NdarrayType:
    """Stands for `numpy.ndarray` in a pickle: only `_reconstruct` may name it; calling it (which would
    allocate an array of any shape the file declares) is refused."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise pickle.UnpicklingError("refusing to call numpy.ndarray")


_NDARRAY = _NdarrayType()


def _empty_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """What numpy's pickled `_reconstruct` does: an empty array (numpy writes shape (0,)) that the pickle then
    fills with `__setstate__`, which checks its bytes against the declared shape before allocating. A larger
    start shape would allocate whatever the file declares: refused."""
    if subtype is not _NDARRAY:
        raise pickle.UnpicklingError(f"refusing array subtype {subtype!r}")
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)
            and int(np.prod(shape, dtype=np.int64)) <= 1):
        raise pickle.UnpicklingError(f"refusing an array pre-allocated with shape {shape!r}")
    return np.ndarray.__new__(np.ndarray, shape, _plain_dtype(dtype))


def _plain_dtype(*args: Any) -> np.dtype:
    """`numpy.dtype(...)` for numbers, booleans and fixed-size strings; object arrays (which unpickle arbitrary
    objects) are refused."""
    try:
        dtype = np.dtype(*args)
    except TypeError as exc:
        raise pickle.UnpicklingError(f"refusing dtype {args!r} ({exc})") from None
    if dtype.hasobject:
        raise pickle.UnpicklingError(f"refusing an array of Python objects (dtype {dtype})")
    return dtype


class NumpyUnpickler(pickle.Unpickler):
    """Builds only plain containers, strings, bytes and numpy arrays of numbers or fixed-size strings: what
    CIFAR-10 batches and the model-zoo pickles hold. Any other global (a function to call, a class to build),
    an object array, or an array whose declared size its bytes do not back, is refused before allocating."""

    _ALLOWED: ClassVar[dict[tuple[str, str], Any]] = {
        ("numpy.core.multiarray", "_reconstruct"): _empty_array,
        ("numpy._core.multiarray", "_reconstruct"): _empty_array,
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): _plain_dtype,
        ("_codecs", "encode"): lambda text, encoding="utf-8": text.encode(encoding),
    }

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def load_numpy_pickle(path: str | os.PathLike, encoding: str, failure: str) -> Any:
    """Unpickle `path` with `NumpyUnpickler`; anything it refuses or cannot read is `<path>: <failure> (...)`."""
    try:
        with open(path, "rb") as f:
            return NumpyUnpickler(f, encoding=encoding).load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError,
            MemoryError, OverflowError, RecursionError) as exc:
        raise UserError(f"{path}: {failure} ({exc or type(exc).__name__})") from None
