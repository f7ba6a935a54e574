"""Checkpoints: tg.save / tg.load of (nested) state dicts as a NumPy .npz archive, or of flat
name -> Tensor dicts as .safetensors (safetensors_format.py), both written atomically.

Format, version 1: a standard .npz (a zip of .npy files, readable by any NumPy without this
library and without pickle) holding

    manifest.npy   a 0-d unicode array: JSON {"format": "tinygrad_gpu-checkpoint", "version": 1,
                   "entries": [...]} with one entry per container, tensor, array or scalar, in order;
    e0.npy, ...    one array per tensor, array or number, named by its entry.

An entry is {"path": [key, ...], "kind": ...}; a key is a string or an integer (a dict key, or a
position in a list or tuple); kind is "dict", "list", "tuple", "tensor", "array", "int", "float",
"bool", "str" or "none"; array-backed entries add "name", "dtype" and "shape" (and tensors
"requires_grad"); strings keep their "value" in the manifest. Containers nest at most MAX_DEPTH deep.

Safety: load() reads the archive itself (members stored uncompressed, each .npy header's size
checked against the bytes present before anything is allocated, CRC-32 verified), so any damaged,
truncated or forged file raises CheckpointError; so does any malformed .safetensors file (its
header is checked against the file's size before anything is allocated). save() writes a
temporary `.NAME.<hex>.tmp` beside the target and renames it over the target, keeping the
target's permission bits; it refuses read-only targets and removes temporaries left by killed
saves of the same target. Both formats go through the same atomic write.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import math
import os
import re
import stat
import struct
import tokenize
import uuid
import zipfile
import zlib
from collections.abc import Callable, Mapping
from typing import Any, BinaryIO

import numpy as np

from . import backend, device_checks, dtypes, safetensors_format

try:
    import fcntl  # POSIX: marks the temporary file of a save in progress
except ImportError:  # pragma: no cover - Windows
    fcntl = None
from .backend import is_cupy_array
from .tensor import Tensor

FORMAT = "tinygrad_gpu-checkpoint"
VERSION = 1
_ARRAY_KINDS = "biuf"  # bool, integers, floats: nothing that would need pickle
_ARRAY_ENTRIES = ("tensor", "array", "int", "float", "bool")
MAX_DEPTH = 100  # containers inside containers: deeper structures are refused on save and on load


class _TupleBuilder(list):
    """A tuple being read back: filled like a list, turned into a tuple at the end."""


class CheckpointError(ValueError):
    """A file is not a readable checkpoint of this library: truncated, corrupted, foreign or mismatched."""


# ---- save ----------------------------------------------------------------------------------
def _where(path: list) -> str:
    return "/".join(map(str, path))


def _flatten(obj: Any, path: list, entries: list, arrays: dict) -> None:
    """Append one manifest entry per node of `obj` (depth first, in order), arrays to `arrays`."""
    for key, value in (obj.items() if isinstance(obj, dict) else enumerate(obj)):
        if isinstance(key, bool) or not isinstance(key, (str, int, np.integer)):
            raise TypeError(f"save: dictionary keys must be strings or integers, got {key!r} at "
                            f"{_where(path) or 'the top'}")
        where = path + [key if isinstance(key, str) else int(key)]
        if len(where) > MAX_DEPTH:  # also what a dict that contains itself would reach
            raise ValueError(f"save: the state is nested more than {MAX_DEPTH} deep at "
                             f"{_where(where[:3])}/...; is a container inside itself?")
        if isinstance(value, (dict, list, tuple)):
            kind = "dict" if isinstance(value, dict) else "list" if isinstance(value, list) else "tuple"
            entries.append({"path": where, "kind": kind})
            _flatten(value, where, entries, arrays)
            continue
        entry: dict[str, Any] = {"path": where}
        if isinstance(value, Tensor):
            entry.update(kind="tensor", requires_grad=value.requires_grad, device=value.device)
            array = value.numpy()
        elif isinstance(value, np.ndarray) or is_cupy_array(value):
            entry["kind"] = "array"
            array = value.get() if is_cupy_array(value) else value
            if array.dtype.kind not in _ARRAY_KINDS:
                raise TypeError(f"save: array at {_where(where)} has dtype {array.dtype}; "
                                "only bool, integer and float arrays can be saved")
        elif isinstance(value, (bool, np.bool_)):
            entry["kind"], array = "bool", np.asarray(value, dtype=np.bool_)
        elif isinstance(value, (int, np.integer)):
            if not -2**63 <= value < 2**63:
                raise TypeError(f"save: integer at {_where(where)} does not fit in 64 bits")
            entry["kind"], array = "int", np.asarray(value, dtype=np.int64)
        elif isinstance(value, (float, np.floating)):
            entry["kind"], array = "float", np.asarray(value, dtype=np.float64)
        elif isinstance(value, str):
            entries.append({"path": where, "kind": "str", "value": value})
            continue
        elif value is None:
            entries.append({"path": where, "kind": "none"})
            continue
        else:
            raise TypeError(f"save: cannot store {type(value).__name__} at {_where(where)}; a checkpoint "
                            "holds dicts, lists and tuples of Tensors, arrays, numbers, strings and None")
        entry.update(name=f"e{len(arrays)}", dtype=array.dtype.str, shape=list(array.shape))
        arrays[entry["name"]] = array
        entries.append(entry)


def save(obj: dict[str, Any], path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> None:
    """Write a state dict to `path` atomically: a crash never leaves a half-written file there.

        tg.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "epoch": 3}, "ckpt.npz")
        tg.save(model.state_dict(), "model.safetensors", metadata={"epoch": "3"})

    A path ending in `.safetensors` is written in that format (flat name -> Tensor, readable by the
    `safetensors` package and PyTorch), with optional `metadata` (str -> str); any other path gets
    the .npz checkpoint, which also holds nested state (optimizers, numbers, strings).
    The data goes to a temporary `.NAME.<hex>.tmp` beside `path`, then is renamed over it. An
    existing file keeps its permission bits; one without its owner's write bit, or that
    os.access says this process may not write, is refused with PermissionError (also for root,
    which open() would let through). Temporaries that a killed save left behind for the same
    `path` are removed by the next save to it (never one that a running save still holds).
    """
    device_checks.raise_pending()  # an error found on the device is raised before anything is written
    if not isinstance(obj, dict):
        raise TypeError(f"save: expected a dict (a state dict), got {type(obj).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"save: path must be a string or os.PathLike, got {type(path).__name__}")
    path = os.fspath(path)
    # every check happens, and every tensor is on the host, before the file system is touched
    if is_safetensors_name(path):
        prepared = safetensors_format.prepare(_safetensors_arrays(obj, metadata), metadata)
        _write_atomically(path, prepared.write_to)
        return
    if metadata is not None:
        raise ValueError(f"save: metadata= is for .safetensors files; {path} is a .npz checkpoint, "
                         "which can hold the strings in the state dict itself")
    entries: list = []
    arrays = {}
    _flatten(obj, [], entries, arrays)
    manifest = {"format": FORMAT, "version": VERSION, "entries": entries}
    arrays["manifest"] = np.array(json.dumps(manifest))
    _write_atomically(path, lambda file: np.savez(file, allow_pickle=False, **arrays))


def is_safetensors_name(name: str) -> bool:
    """True when a file name says safetensors (ends in .safetensors, any case)."""
    return name.lower().endswith(".safetensors")


def _safetensors_arrays(obj: dict, metadata: Any) -> dict[str, np.ndarray]:
    """Host copies of a flat name -> Tensor dict, or TypeError naming what safetensors cannot hold."""
    if metadata is not None and not (isinstance(metadata, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError(f"save: metadata must be a dict of strings to strings, got {metadata!r:.80}")
    for key, value in obj.items():
        if not isinstance(key, str):
            raise TypeError(f"save: a .safetensors file maps string names to Tensors, got the key {key!r}; "
                            "save nested or non-string-keyed state to a .npz checkpoint")
        if key == safetensors_format.METADATA_KEY:
            raise ValueError(f"save: {key!r} is reserved for the metadata in a .safetensors file; rename it")
        if not isinstance(value, Tensor):
            raise TypeError(f"save: a .safetensors file maps names to Tensors, but {key!r} is of type "
                            f"{type(value).__name__}; save nested state (optimizers, numbers, strings) "
                            "to a .npz checkpoint, or wrap arrays with tg.tensor()")
    return {key: value.numpy() for key, value in obj.items()}


def _write_atomically(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Run write(file) on a temporary file beside `path`, make it durable, then rename it over `path`."""
    mode = _replaceable_mode(path)
    directory = os.path.dirname(os.path.abspath(path))
    _remove_leftovers(directory, os.path.basename(path))
    # The temporary file lives in the target's directory so that os.replace is an atomic rename.
    temporary = os.path.join(directory, f".{os.path.basename(path)}.{uuid.uuid4().hex}.tmp")
    try:
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0),
                             0o666)
    except PermissionError as exc:
        raise PermissionError(exc.errno, f"save: cannot create a file in {directory} to write {path} "
                              f"({exc.strerror})", path) from None
    except FileNotFoundError as exc:  # said of the temporary's name, which the user never gave
        raise FileNotFoundError(exc.errno, f"save: the directory {directory} does not exist", path) from None
    try:
        with os.fdopen(descriptor, "wb") as file:
            _hold(file)  # a save running beside us never removes this file as a leftover
            write(file)
            file.flush()
            if mode is not None and hasattr(os, "fchmod"):
                os.fchmod(file.fileno(), mode)  # the replaced file's permissions, not the umask's
            os.fsync(file.fileno())  # the data is on disk before the name points at it
            if fcntl is not None:  # renamed while still held (POSIX allows renaming an open file)
                os.replace(temporary, path)
        if fcntl is None:
            if mode is not None:
                os.chmod(temporary, mode)
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)


def _replaceable_mode(path: str) -> int | None:
    """The permission bits of the file at `path` (None when there is none), or PermissionError.

    Refused: a file whose mode has no write bit for its owner, or that os.access says this process
    may not write. The first rule also holds for root, which open(path, "wb") would let through:
    a file made read-only on purpose is not replaced.
    """
    try:
        status = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError:
        return None  # e.g. a dangling symlink: creating the file will say what is wrong
    if stat.S_ISDIR(status.st_mode):
        raise IsADirectoryError(errno.EISDIR, f"save: {path} is a directory", path)
    if not status.st_mode & stat.S_IWUSR or not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, f"save: {path} is read-only (mode "
                              f"{stat.filemode(status.st_mode)}); it is not replaced. Make it writable "
                              "(chmod u+w) or save elsewhere", path)
    return stat.S_IMODE(status.st_mode)


def _hold(file: Any) -> None:
    """Lock a temporary file being written (POSIX), so _remove_leftovers can tell it from a leftover."""
    if fcntl is not None:
        fcntl.flock(file.fileno(), fcntl.LOCK_EX)


def _remove_leftovers(directory: str, name: str) -> None:
    """Delete `.NAME.<32 hex>.tmp` files that earlier, killed saves of `name` left in `directory`."""
    pattern = re.compile(rf"\.{re.escape(name)}\.[0-9a-f]{{32}}\.tmp")
    try:
        candidates = [entry for entry in os.listdir(directory) if pattern.fullmatch(entry)]
    except OSError:
        return
    for candidate in candidates:
        leftover = os.path.join(directory, candidate)
        with contextlib.suppress(OSError):
            if not stat.S_ISREG(os.lstat(leftover).st_mode):
                continue  # only regular files: never follow a link
            if fcntl is None:
                os.unlink(leftover)
                continue
            descriptor = os.open(leftover, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            try:  # a running save holds its temporary: skip it
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(leftover)
            finally:
                os.close(descriptor)


def _fsync_directory(directory: str) -> None:
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    with contextlib.suppress(OSError):
        descriptor = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


# ---- load ----------------------------------------------------------------------------------
# Everything a damaged file can make zipfile, NumPy's header parser or the JSON decoder raise: a
# flipped bit has been seen to give NotImplementedError (compression method), RuntimeError
# ("encrypted"), OSError (a seek to a negative offset), tokenize.TokenError (the .npy header),
# RecursionError (deep JSON). Raised while decoding the file's bytes, each means "damaged".
_UNREADABLE = (ValueError, EOFError, zipfile.BadZipFile, zlib.error, KeyError, IndexError, TypeError,
               RuntimeError, NotImplementedError, OSError, SyntaxError, tokenize.TokenError,
               RecursionError, OverflowError, UnicodeError, struct.error, MemoryError)
_HEADER_LIMIT = 10_000  # bytes of a .npy header, NumPy's own limit for untrusted files


def _read_npy(member: Any, size: int, path: str, name: str) -> np.ndarray:
    """One .npy member of `size` bytes; its header's claims are checked against `size` before allocating."""
    version = np.lib.format.read_magic(member)
    if version == (1, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(member, _HEADER_LIMIT)
    elif version == (2, 0):
        shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(member, _HEADER_LIMIT)
    else:
        raise CheckpointError(f"{path}: array {name!r} has .npy format version {version}")
    if dtype.kind not in _ARRAY_KINDS + "U" or dtype.hasobject or dtype.itemsize == 0 or dtype.fields:
        raise CheckpointError(f"{path}: array {name!r} has dtype {dtype}, which a checkpoint cannot hold")
    count = math.prod(shape)  # Python integers: a forged shape cannot overflow
    available = size - member.tell()
    if count * dtype.itemsize != available:
        raise CheckpointError(f"{path}: array {name!r} claims shape {shape} of {dtype} "
                              f"({count * dtype.itemsize} bytes) but holds {available} bytes")
    buffer = bytearray(available)
    view, filled = memoryview(buffer), 0
    while filled < available:
        got = member.readinto(view[filled:])
        if not got:
            raise CheckpointError(f"{path}: array {name!r} is truncated")
        filled += got
    member.read(1)  # reaching the end makes zipfile compare the CRC-32: a flipped data bit shows here
    array = np.frombuffer(buffer, dtype=dtype).reshape(shape, order="F" if fortran_order else "C")
    if dtype.kind == "b" and count and int(array.view(np.uint8).max()) > 1:
        raise CheckpointError(f"{path}: boolean array {name!r} holds bytes other than 0 and 1")
    return array


def _read_archive(file: Any, path: str) -> dict[str, np.ndarray]:
    """Every array of the .npz archive in `file`, by name, each checked before memory is set aside for it."""
    start = file.tell()
    file_size = file.seek(0, os.SEEK_END) - start
    file.seek(start)
    arrays: dict[str, np.ndarray] = {}
    with zipfile.ZipFile(file) as archive:
        for info in archive.infolist():
            name = info.filename[:-4] if info.filename.endswith(".npy") else None
            if name is None or name in arrays:
                raise CheckpointError(f"{path} is a zip archive but not a tinygrad_gpu checkpoint "
                                      f"(it holds {info.filename!r})")
            # np.savez stores without compression: a member larger than the file is a lie
            if (info.compress_type != zipfile.ZIP_STORED or info.compress_size != info.file_size
                    or info.file_size > file_size):
                raise CheckpointError(f"{path}: member {info.filename!r} is compressed or claims "
                                      f"{info.file_size} bytes in a file of {file_size}")
            with archive.open(info) as member:
                arrays[name] = _read_npy(member, info.file_size, path, name)
    return arrays


def _read_manifest(archive: dict, path: str) -> list:
    if "manifest" not in archive:
        raise CheckpointError(f"{path} is a NumPy archive but not a tinygrad_gpu checkpoint "
                              f"(no manifest; it holds {sorted(archive)[:5]})")
    raw = archive["manifest"]
    if raw.dtype.kind != "U" or raw.shape != ():
        raise CheckpointError(f"{path}: the manifest is not a JSON string")
    try:
        manifest = json.loads(str(raw))
    except (ValueError, RecursionError) as exc:  # RecursionError: nested thousands deep
        raise CheckpointError(f"{path}: the manifest is not valid JSON "
                              f"({type(exc).__name__}: {exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a tinygrad_gpu checkpoint (format {manifest.get('format')!r})"
                              if isinstance(manifest, dict) else f"{path}: the manifest is not an object")
    version = manifest.get("version")
    if not isinstance(version, int) or not 1 <= version <= VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}; this library reads "
                              f"versions 1 to {VERSION} (a newer tinygrad_gpu wrote it?)")
    entries = manifest.get("entries")
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise CheckpointError(f"{path}: the manifest has no list of entries")
    return entries


def _array_for(entry: dict, archive: dict, path: str, where: str) -> np.ndarray:
    name = entry.get("name")
    if not isinstance(name, str) or name == "manifest" or name not in archive:
        raise CheckpointError(f"{path}: entry {where} refers to a missing array {name!r}")
    array = archive[name]
    if array.dtype.str != entry.get("dtype") or list(array.shape) != entry.get("shape"):
        raise CheckpointError(f"{path}: {where} is {array.dtype} {tuple(array.shape)} in the file but "
                              f"the manifest says {entry.get('dtype')} {entry.get('shape')}: it was altered")
    if array.dtype.kind not in _ARRAY_KINDS:
        raise CheckpointError(f"{path}: {where} has dtype {array.dtype}, which a checkpoint cannot hold")
    return array


def _value_for(entry: dict, archive: dict, path: str, where: str, device: str | None) -> Any:
    kind = entry.get("kind")
    if kind in ("dict", "list", "tuple"):
        return {"dict": dict, "list": list, "tuple": _TupleBuilder}[kind]()
    if kind == "none":
        return None
    if kind == "str":
        if not isinstance(entry.get("value"), str):
            raise CheckpointError(f"{path}: string entry {where} has no value")
        return entry["value"]
    if kind not in _ARRAY_ENTRIES:
        raise CheckpointError(f"{path}: entry {where} has an unknown kind {kind!r}")
    array = _array_for(entry, archive, path, where)
    if kind == "array":
        return array
    if kind == "tensor":
        if array.dtype not in dtypes.SUPPORTED:
            raise CheckpointError(f"{path}: tensor {where} has dtype {array.dtype}; tensors are "
                                  f"{dtypes.names(dtypes.SUPPORTED)}")
        requires_grad = entry.get("requires_grad", False)
        if not isinstance(requires_grad, bool) or (requires_grad and not dtypes.is_floating(array.dtype)):
            raise CheckpointError(f"{path}: tensor {where} of dtype {array.dtype} has requires_grad "
                                  f"{requires_grad!r}; it must be false, or true for a floating tensor")
        return Tensor(array, device=device or backend.default_device(), dtype=array.dtype,
                      requires_grad=requires_grad)
    if array.shape != ():
        raise CheckpointError(f"{path}: scalar entry {where} holds an array of shape {array.shape}")
    return {"int": int, "float": float, "bool": bool}[kind](array)


def load(path: str | os.PathLike | BinaryIO, device: str | None = None) -> dict[str, Any]:
    """Read a checkpoint written by save(); tensors go to `device` (the default device when None).

    `path` is a file name or a binary file object open for reading (e.g. io.BytesIO), read from
    its current position. A name ending in `.safetensors` (or, for a file object without such a
    name, bytes that look like one) is read as safetensors and gives a dict name -> Tensor (dtypes
    kept; F16 and BF16 become float32 and other integer widths int64, exactly). Raises
    CheckpointError (a ValueError) for a truncated, corrupted, foreign or altered file, whatever
    the damage; FileNotFoundError when there is none. Sizes are checked against the file before
    memory is set aside. Arrays of a .npz checkpoint come back as NumPy arrays.
    """
    device_checks.raise_pending()
    is_file = _check_source(path, "load")
    if device is not None:
        device = backend.check_device(device)
    if is_file:
        name = str(getattr(path, "name", f"<{type(path).__name__}>"))
        if _reads_as_safetensors(path, name):
            return _load_safetensors(path, name, device)
        return _unflatten(_checked_archive(path, name), name, device)
    name = os.fspath(path)
    with open(name, "rb") as file:  # a missing or unreadable file is the OSError open() gives
        if is_safetensors_name(name):
            return _load_safetensors(file, name, device)
        archive = _checked_archive(file, name)
    return _unflatten(archive, name, device)


def load_metadata(path: str | os.PathLike | BinaryIO) -> dict[str, str]:
    """The metadata (str -> str) saved with a .safetensors file, read from its header alone.

    The whole header is checked as load() checks it (CheckpointError when it is damaged), but no
    tensor is read. A .npz checkpoint has no metadata: ValueError.
    """
    is_file = _check_source(path, "load_metadata")
    name = str(getattr(path, "name", f"<{type(path).__name__}>")) if is_file else os.fspath(path)
    with contextlib.nullcontext(path) if is_file else open(name, "rb") as file:
        if not (_reads_as_safetensors(file, name) if is_file else is_safetensors_name(name)):
            raise ValueError(f"load_metadata: {name} is not a .safetensors file; a .npz checkpoint has "
                             "no metadata (keep such strings in the state dict itself)")
        try:
            return safetensors_format.read_header(file)[1]
        except safetensors_format.FormatError as exc:
            raise CheckpointError(f"{name} is not a valid safetensors file: {exc}") from None


def _check_source(path: Any, what: str) -> bool:
    """True for a binary file object, False for a path; TypeError for anything else."""
    is_file = hasattr(path, "read") and hasattr(path, "seek")
    if isinstance(path, io.TextIOBase) or (not is_file and not isinstance(path, (str, os.PathLike))):
        raise TypeError(f"{what}: path must be a string, os.PathLike or a binary file object, "
                        f"got {type(path).__name__}")
    return is_file


def _reads_as_safetensors(file: Any, name: str) -> bool:
    """Whether a file object holds safetensors: by its name, else by its first bytes (the JSON header's
    opening brace after the 8-byte length; a .npz starts with a zip signature instead)."""
    if is_safetensors_name(name):
        return True
    start = file.tell()
    head = file.read(9)
    file.seek(start)
    return len(head) == 9 and head[8:9] == b"{"


def _load_safetensors(file: Any, path: str, device: str | None) -> dict[str, Tensor]:
    """name -> Tensor from the safetensors file `file`; CheckpointError for anything malformed."""
    data = file.read()
    try:
        arrays, _ = safetensors_format.decode(data)
    except safetensors_format.FormatError as exc:
        hint = " (it is a zip archive: a .npz checkpoint under another name?)" if data[:2] == b"PK" else ""
        raise CheckpointError(f"{path} is not a valid safetensors file: {exc}{hint}") from None
    tensors = {name: _as_tensor_array(array, path, name) for name, array in arrays.items()}
    device = device or backend.default_device()
    return {name: Tensor(array, device=device, dtype=array.dtype) for name, array in tensors.items()}


def _as_tensor_array(array: np.ndarray, path: str, name: str) -> np.ndarray:
    """`array` in a tensor dtype: kept when it is one, else widened exactly (float16 to float32,
    other integers to int64); uint64 values beyond int64 are refused."""
    if array.dtype in dtypes.SUPPORTED:
        return array
    if array.dtype.kind == "f":
        return array.astype(np.float32)
    if array.dtype == np.uint64 and array.size and int(array.max()) > np.iinfo(np.int64).max:
        raise CheckpointError(f"{path}: tensor {name!r} is U64 with values beyond int64, which no tensor "
                              f"dtype holds ({dtypes.names(dtypes.SUPPORTED)})")
    return array.astype(np.int64)


def _checked_archive(file: Any, path: str) -> dict[str, np.ndarray]:
    """The arrays of the archive in `file`, or CheckpointError for anything that is not one."""
    try:
        start = file.tell()
        if file.read(len(np.lib.format.MAGIC_PREFIX)) == np.lib.format.MAGIC_PREFIX:
            raise CheckpointError(f"{path} holds a single NumPy array, not a tinygrad_gpu checkpoint")
        file.seek(start)
        return _read_archive(file, path)
    except CheckpointError:
        raise
    except _UNREADABLE as exc:  # the bytes themselves are wrong: nothing else reaches here
        raise CheckpointError(f"{path} is not a tinygrad_gpu checkpoint, or it is truncated or "
                              f"damaged ({type(exc).__name__}: {exc})") from None


def _unflatten(archive: dict, path: str, device: str | None) -> dict[str, Any]:
    """The nested dict described by the archive's manifest, every entry checked."""
    entries = _read_manifest(archive, path)
    result: dict[str, Any] = {}
    for entry in entries:
        where = entry.get("path")
        if (not isinstance(where, list) or not where or len(where) > MAX_DEPTH
                or not all(isinstance(k, (str, int)) and not isinstance(k, bool) for k in where)):
            raise CheckpointError(f"{path}: the manifest has an entry without a valid path: {entry}")
        parent: Any = result
        for key in where[:-1]:  # containers come before what they hold
            if isinstance(parent, dict) and key in parent:
                parent = parent[key]
            elif isinstance(parent, list) and isinstance(key, int) and 0 <= key < len(parent):
                parent = parent[key]
            else:
                raise CheckpointError(f"{path}: entry {_where(where)} has no container before it")
        value = _value_for(entry, archive, path, _where(where), device)
        key = where[-1]
        if isinstance(parent, dict) and key not in parent:
            parent[key] = value
        elif isinstance(parent, list) and key == len(parent):
            parent.append(value)
        else:
            raise CheckpointError(f"{path}: entry {_where(where)} is repeated, out of order or "
                                  "inside something that is not a container")
    return _finished(result)


def _finished(value: Any) -> Any:
    """The loaded structure with every _TupleBuilder turned into a tuple."""
    if isinstance(value, dict):
        return {key: _finished(item) for key, item in value.items()}
    if isinstance(value, list):
        items = [_finished(item) for item in value]
        return tuple(items) if isinstance(value, _TupleBuilder) else items
    return value
