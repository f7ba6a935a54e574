"""The safetensors format (flat name -> tensor, no pickle), read and written with NumPy alone.

Layout: an 8-byte little-endian header length N, N bytes of JSON ({name: {"dtype", "shape",
"data_offsets": [begin, end]}, optional "__metadata__": {str: str}}), then the tensors' bytes,
little-endian, C order, offsets relative to the end of the header. The same files are read and
written by the `safetensors` package, so weights move to and from PyTorch and Hugging Face tools.
Everything a file claims is checked against the file before any array is made.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np

# safetensors' dtype names and NumPy's, both ways (bfloat16 and float16 are readable by NumPy only
# as raw bits, so they are left out: such a file is refused with its dtype named)
DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
          "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F32": np.float32,
          "F64": np.float64}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_HEADER = 100 * 1024 * 1024  # the package's own limit
MAX_NDIM = 64


class FormatError(ValueError):
    """The bytes are not a valid safetensors file; the message says what is wrong."""


def encode(arrays: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> bytes:
    """The safetensors bytes of a flat name -> NumPy array mapping (tensors sorted by name)."""
    header: dict[str, Any] = {}
    if metadata:
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
            raise TypeError("safetensors metadata must map strings to strings")
        header["__metadata__"] = dict(metadata)
    chunks, offset = [], 0
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        if array.dtype not in NAMES:
            raise TypeError(f"safetensors: {name} has dtype {array.dtype}, which the format cannot hold "
                            f"(supported: {', '.join(str(np.dtype(t)) for t in DTYPES.values())})")
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {"dtype": NAMES[array.dtype], "shape": list(array.shape),
                        "data_offsets": [offset, offset + len(data)]}
        chunks.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned, as the package writes them
    return struct.pack("<Q", len(text)) + text + b"".join(chunks)


def decode(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> NumPy array, metadata) from safetensors bytes; FormatError for anything malformed."""
    view = memoryview(data)
    if len(view) < 8:
        raise FormatError(f"{len(view)} bytes is too short for a safetensors header")
    (size,) = struct.unpack("<Q", view[:8])
    if size > MAX_HEADER or 8 + size > len(view):
        raise FormatError(f"the header claims {size} bytes, but {len(view) - 8} follow the length")
    try:
        header = json.loads(bytes(view[8:8 + size]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise FormatError(f"the header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                 for k, v in metadata.items()):
        raise FormatError("__metadata__ must map strings to strings")
    body = view[8 + size:]
    spans, arrays = [], {}
    for name, info in header.items():
        dtype, shape, (begin, end) = _checked_entry(name, info)
        expected = int(np.prod(shape, dtype=object)) * np.dtype(dtype).itemsize
        if not 0 <= begin <= end <= len(body) or end - begin != expected:
            raise FormatError(f"{name}: offsets [{begin}, {end}) do not hold {shape} of {np.dtype(dtype)} "
                              f"({expected} bytes) within the {len(body)} bytes of data")
        spans.append((begin, end, name))
        arrays[name] = np.frombuffer(body[begin:end], dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
    position = 0
    for begin, end, name in sorted(spans):  # the data is covered exactly: no holes, no overlaps
        if begin != position:
            raise FormatError(f"{name}: its data starts at byte {begin}, expected {position} "
                              "(a gap or an overlap)")
        position = end
    if position != len(body):
        raise FormatError(f"{len(body) - position} bytes after the last tensor belong to none")
    return {name: array.astype(array.dtype.newbyteorder("="), copy=True) for name, array in arrays.items()}, \
        metadata


def _checked_entry(name: str, info: Any) -> tuple[Any, tuple, tuple[int, int]]:
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{name}: an entry needs exactly dtype, shape and data_offsets")
    dtype = DTYPES.get(info["dtype"]) if isinstance(info["dtype"], str) else None
    if dtype is None:
        raise FormatError(f"{name}: dtype {info['dtype']!r} is not supported here "
                          f"(supported: {', '.join(DTYPES)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(n) is int and n >= 0 for n in shape)):
        raise FormatError(f"{name}: shape {shape!r} is not a list of non-negative ints")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(n) is int for n in offsets)):
        raise FormatError(f"{name}: data_offsets {offsets!r} is not a pair of ints")
    return dtype, tuple(shape), (offsets[0], offsets[1])
