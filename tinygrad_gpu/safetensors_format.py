"""The safetensors format (flat name -> tensor, no pickle), read and written with NumPy alone.

Layout: an 8-byte little-endian header length N, N bytes of JSON ({name: {"dtype", "shape",
"data_offsets": [begin, end]}, optional "__metadata__": {str: str}}), then the tensors' bytes,
little-endian, C order, offsets relative to the end of the header. The same files are read and
written by the `safetensors` package, so weights move to and from PyTorch and Hugging Face tools.
Everything a file claims is checked against the file's size before any array is made, and the
tensors must cover the data exactly (no gaps, no overlaps, nothing left over), as the package requires.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from typing import Any, BinaryIO, NamedTuple

import numpy as np

# safetensors' dtype names and NumPy's. BF16 has no NumPy dtype: it is read as float32, which holds
# every bfloat16 value exactly, and never written. F8 and complex types are refused with their name.
DTYPES = {"BOOL": np.bool_, "U8": np.uint8, "I8": np.int8, "I16": np.int16, "U16": np.uint16,
          "I32": np.int32, "U32": np.uint32, "I64": np.int64, "U64": np.uint64, "F16": np.float16,
          "F32": np.float32, "F64": np.float64}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
ITEMSIZE = {**{name: np.dtype(t).itemsize for name, t in DTYPES.items()}, "BF16": 2}
METADATA_KEY = "__metadata__"
MAX_HEADER = 100 * 1024 * 1024  # the package's own limit
MAX_NDIM = 64


class FormatError(ValueError):
    """The bytes are not a valid safetensors file; the message says what is wrong."""


class Entry(NamedTuple):
    """One tensor as the header describes it; begin/end are byte offsets into the data section."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int


# ---- write ---------------------------------------------------------------------------------
class Prepared(NamedTuple):
    """A checked file ready to write: the length-prefixed header, then the arrays' bytes in order."""

    header: bytes
    arrays: list[np.ndarray]

    def write_to(self, file: BinaryIO) -> None:
        """Write the file, one tensor at a time: no second copy of the whole model in memory."""
        file.write(self.header)
        for array in self.arrays:
            file.write(array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C"))


def prepare(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> Prepared:
    """Check a flat name -> NumPy array mapping (and metadata) and lay it out, in the mapping's order."""
    if metadata is not None and not (isinstance(metadata, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("safetensors metadata must be a dict of strings to strings, got "
                        f"{metadata!r:.80}")
    header: dict[str, Any] = {METADATA_KEY: dict(metadata)} if metadata else {}
    blobs, offset = [], 0
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"safetensors: tensor names must be strings, got {name!r}")
        if name == METADATA_KEY:
            raise ValueError(f"safetensors: {METADATA_KEY!r} is reserved for the metadata; "
                             "rename the tensor")
        array = np.asarray(array)
        if array.dtype.newbyteorder("=") not in NAMES:  # big-endian arrays are written little-endian
            raise TypeError(f"safetensors: {name} has dtype {array.dtype}, which the format cannot hold "
                            f"(supported: {', '.join(str(np.dtype(t)) for t in DTYPES.values())})")
        size = array.size * array.itemsize
        header[name] = {"dtype": NAMES[array.dtype.newbyteorder("=")], "shape": list(array.shape),
                        "data_offsets": [offset, offset + size]}
        blobs.append(array)
        offset += size
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON could escape it, but no reader would accept it
        raise ValueError("safetensors: a tensor name or metadata string is not valid Unicode "
                         "(it holds a lone surrogate)") from None
    text += b" " * (-len(text) % 8)  # the tensors start 8-byte aligned, as the package writes them
    return Prepared(struct.pack("<Q", len(text)) + text, blobs)


def encode(arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
    """The safetensors bytes of a flat name -> NumPy array mapping."""
    buffer = io.BytesIO()
    prepare(arrays, metadata).write_to(buffer)
    return buffer.getvalue()


# ---- read ----------------------------------------------------------------------------------
def header_length(prefix: bytes, file_size: int) -> int:
    """The header length the first 8 bytes claim, checked against the size of the whole file."""
    if len(prefix) < 8 or file_size < 8:
        raise FormatError(f"{file_size} bytes is too short for a safetensors header")
    (size,) = struct.unpack("<Q", prefix[:8])
    if size > MAX_HEADER:
        raise FormatError(f"the header claims {size} bytes, more than the format's limit of {MAX_HEADER}")
    if 8 + size > file_size:
        raise FormatError(f"the header claims {size} bytes, but only {file_size - 8} follow its length")
    return size


def parse_header(text: bytes, data_size: int) -> tuple[list[Entry], dict[str, str]]:
    """The entries (in header order) and metadata of a header, checked against `data_size` bytes of data."""
    try:
        header = json.loads(text.decode("utf-8"), object_pairs_hook=_unique_keys,
                            parse_constant=_no_constants)
    except FormatError:
        raise
    except (UnicodeDecodeError, ValueError, RecursionError, MemoryError) as exc:
        # ValueError also covers integers too long to convert and JSONDecodeError
        raise FormatError(f"the header is not valid UTF-8 JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise FormatError("the header is not a JSON object")
    metadata = header.pop(METADATA_KEY, None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise FormatError(f"{METADATA_KEY} must map strings to strings")
    entries = [_checked_entry(name, info, data_size) for name, info in header.items()]
    position = 0
    for entry in sorted(entries, key=lambda e: (e.begin, e.end)):  # data covered exactly
        if entry.begin != position:
            raise FormatError(f"{entry.name}: its data starts at byte {entry.begin}, expected {position} "
                              "(a gap or an overlap between tensors)")
        position = entry.end
    if position != data_size:
        raise FormatError(f"{data_size - position} bytes after the last tensor belong to none")
    return entries, metadata


def read_header(file: BinaryIO) -> tuple[list[Entry], dict[str, str], int]:
    """(entries, metadata, data start) of the safetensors file `file`, reading only its header."""
    start = file.tell()
    file_size = file.seek(0, io.SEEK_END) - start
    file.seek(start)
    size = header_length(file.read(8), file_size)
    text = file.read(size)
    if len(text) != size:
        raise FormatError(f"the header is truncated ({len(text)} of {size} bytes)")
    entries, metadata = parse_header(text, file_size - 8 - size)
    return entries, metadata, start + 8 + size


def decode(data: bytes | memoryview) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """(name -> NumPy array, metadata) from safetensors bytes; FormatError for anything malformed.

    Arrays are native-endian copies (they do not keep `data` alive); BF16 tensors come back as float32.
    """
    view = memoryview(data).cast("B")
    size = header_length(bytes(view[:8]), len(view))
    entries, metadata = parse_header(bytes(view[8:8 + size]), len(view) - 8 - size)
    body = view[8 + size:]
    return {entry.name: array_of(entry, body[entry.begin:entry.end]) for entry in entries}, metadata


def array_of(entry: Entry, data: bytes | memoryview) -> np.ndarray:
    """The array an entry describes, from its `end - begin` bytes (a fresh, writable copy)."""
    if entry.dtype == "BF16":  # the high half of a float32: shifting the bits up is exact
        bits = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
        return bits.view(np.float32).reshape(entry.shape)
    raw = np.frombuffer(data, dtype=np.dtype(DTYPES[entry.dtype]).newbyteorder("<"))
    if entry.dtype == "BOOL" and raw.size and int(raw.view(np.uint8).max()) > 1:
        raise FormatError(f"{entry.name}: a BOOL tensor holds bytes other than 0 and 1")
    return raw.astype(raw.dtype.newbyteorder("="), copy=True).reshape(entry.shape)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        repeated = next(key for key, _ in pairs if key in seen or seen.add(key))
        raise FormatError(f"the header names {repeated[:80]!r} more than once")
    return result


def _no_constants(name: str) -> None:
    raise FormatError(f"the header holds {name}, which is not JSON")


def _checked_entry(name: str, info: Any, data_size: int) -> Entry:
    label = name if len(name) <= 80 else name[:77] + "..."  # a forged name may be megabytes long
    if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
        raise FormatError(f"{label}: an entry needs exactly dtype, shape and data_offsets")
    dtype = info["dtype"]
    if not isinstance(dtype, str) or dtype not in ITEMSIZE:
        raise FormatError(f"{label}: dtype {dtype!r:.40} is not supported here "
                          f"(supported: {', '.join(ITEMSIZE)})")
    shape, offsets = info["shape"], info["data_offsets"]
    if (not isinstance(shape, list) or len(shape) > MAX_NDIM
            or not all(type(n) is int and 0 <= n < 2**64 for n in shape)):
        raise FormatError(f"{label}: shape {shape!r:.80} is not a list of at most {MAX_NDIM} "
                          "64-bit unsigned ints")
    if not (isinstance(offsets, list) and len(offsets) == 2
            and all(type(n) is int and 0 <= n < 2**64 for n in offsets)):
        raise FormatError(f"{label}: data_offsets {offsets!r:.80} is not a pair of 64-bit unsigned ints")
    begin, end = offsets
    expected = ITEMSIZE[dtype]
    for n in shape:  # Python integers: a forged shape cannot overflow
        expected *= n
    if not begin <= end <= data_size or end - begin != expected:
        raise FormatError(f"{label}: offsets [{begin}, {end}) do not hold shape {tuple(shape)} of {dtype} "
                          f"({expected} bytes) within the {data_size} bytes of data")
    return Entry(name, dtype, tuple(shape), begin, end)
