"""Reader for the IDX file format of MNIST and Fashion-MNIST.

An IDX file (LeCun et al., "The MNIST database", http://yann.lecun.com/exdb/mnist/) is a header followed by
the raw array in C order, all big-endian:

* bytes 0-1: zero; byte 2: the element type code (table below); byte 3: the number of dimensions ``d``;
* then ``d`` unsigned 32-bit sizes, one per dimension;
* then ``prod(sizes)`` elements.

==== ============= ==============
code element      torch dtype
==== ============= ==============
0x08 unsigned byte ``torch.uint8``
0x09 signed byte   ``torch.int8``
0x0B 16-bit int    ``torch.int16``
0x0C 32-bit int    ``torch.int32``
0x0D 32-bit float  ``torch.float32``
0x0E 64-bit float  ``torch.float64``
==== ============= ==============
"""

from __future__ import annotations

import gzip
import math
import os
import zlib
from pathlib import Path

import numpy as np
import torch

__all__ = ["read_idx"]

_GZIP_MAGIC = b"\x1f\x8b"
_HEADER_BYTES = 4
_DIM_BYTES = 4

# IDX type code -> big-endian numpy dtype of one element.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    raw = path.read_bytes()
    if not raw.startswith(_GZIP_MAGIC):
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as error:
        raise ValueError(f"{path}: corrupt or truncated gzip stream ({error})") from error


def read_idx(path: str | os.PathLike) -> torch.Tensor:
    """Read an IDX file, plain or gzip-compressed, into a tensor.

    Compression is detected from the content (the gzip magic bytes), not from the file name, so both
    ``train-images-idx3-ubyte`` and ``train-images-idx3-ubyte.gz`` work.

    Args:
        path: the file to read.

    Returns:
        A tensor with the file's dimensions and the dtype of its type code (see the module docstring),
        in native byte order. It owns its memory (a fresh copy), so it may be modified.

    Raises:
        TypeError: ``path`` is not a str or ``os.PathLike``.
        FileNotFoundError: the file does not exist.
        ValueError: the file is not valid IDX: bad magic bytes, unknown type code, a header shorter than
            its dimension count says, a payload whose size does not match the dimensions, or a corrupt
            gzip stream. The message names the file and what was wrong.

    Example:
        >>> labels = read_idx("/usr/share/datasets/fashion-mnist/t10k-labels-idx1-ubyte.gz")
        >>> labels.shape, labels.dtype
        (torch.Size([10000]), torch.uint8)
    """
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__} {path!r}")
    path = Path(path)
    content = _read_bytes(path)

    if len(content) < _HEADER_BYTES:
        raise ValueError(
            f"{path}: not an IDX file: expected at least a {_HEADER_BYTES}-byte header, "
            f"got {len(content)} bytes"
        )
    if content[0] != 0 or content[1] != 0:
        raise ValueError(
            f"{path}: not an IDX file: expected the magic number to start with bytes 0x00 0x00, "
            f"got 0x{content[0]:02x} 0x{content[1]:02x}"
        )
    type_code, ndim = content[2], content[3]
    if type_code not in _IDX_DTYPES:
        known = ", ".join(f"0x{code:02x}" for code in _IDX_DTYPES)
        raise ValueError(f"{path}: unknown IDX type code 0x{type_code:02x}, expected one of {known}")
    if ndim == 0:
        raise ValueError(f"{path}: expected at least 1 dimension in the IDX header, got 0")

    payload_start = _HEADER_BYTES + _DIM_BYTES * ndim
    if len(content) < payload_start:
        raise ValueError(
            f"{path}: truncated IDX header: {ndim} dimensions need {payload_start} header bytes, "
            f"got {len(content)} bytes in the whole file"
        )
    dims = tuple(int(d) for d in np.frombuffer(content, dtype=">u4", count=ndim, offset=_HEADER_BYTES))
    dtype = _IDX_DTYPES[type_code]
    expected = math.prod(dims) * dtype.itemsize
    actual = len(content) - payload_start
    if actual != expected:
        raise ValueError(
            f"{path}: IDX payload size does not match the header: dimensions {dims} of "
            f"{dtype.itemsize}-byte elements need {expected} bytes, got {actual}"
            + (" (file truncated?)" if actual < expected else " (trailing bytes)")
        )
    array = np.frombuffer(content, dtype=dtype, offset=payload_start).reshape(dims)
    # astype copies into a writable, native-endian array that torch can own.
    return torch.from_numpy(array.astype(dtype.newbyteorder("="), copy=True))
