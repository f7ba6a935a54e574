"""tg.save / tg.load of .safetensors files: exact round trips of every tensor dtype, metadata, the same
atomic write as .npz checkpoints, and CheckpointError for every malformed file."""

import io
import json
import os
import stat
import struct

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import tinygrad_gpu as tg
from tinygrad_gpu import safetensors_format, serialization


def bits(array):
    """The raw bytes of an array, so that -0.0, NaN and subnormals compare exactly."""
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


def all_dtypes(device):
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    return {
        "f32": tg.tensor(special, device=device),
        "f64": tg.tensor(np.arange(6.0).reshape(2, 3) / 7, device=device),
        "i32": tg.tensor(np.array([-2**31, 0, 2**31 - 1], np.int32), device=device),
        "i64": tg.tensor(np.array([[-2**63], [2**62]], np.int64), device=device),
        "mask": tg.tensor([True, False, True], device=device),
        "steps": tg.tensor(7, device=device),  # 0-d, as BatchNorm's num_batches_tracked
        "empty": tg.tensor(np.zeros((0, 3), np.float32), device=device),
        "transposed": tg.tensor(np.arange(12.0, dtype=np.float32).reshape(3, 4), device=device).T,
        "layer.0.weight/ü": tg.tensor([[1.5]], device=device),
    }


def raw(value):
    return value.numpy() if isinstance(value, tg.Tensor) else np.asarray(value)


def header_file(header, body=b"", length=None):
    """Safetensors bytes with a hand-made header (a dict is written as JSON, bytes as they are)."""
    text = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(text) if length is None else length) + text + body


def test_every_tensor_dtype_round_trips_exactly_in_order(tmp_path, device):
    state = all_dtypes(device)
    path = tmp_path / "model.safetensors"
    tg.save(state, path)
    loaded = tg.load(path, device=device)
    assert list(loaded) == list(state)  # the state dict's own order
    for name, tensor in state.items():
        got = loaded[name]
        assert isinstance(got, tg.Tensor) and got.device == device and not got.requires_grad
        assert got.dtype == tensor.dtype and got.shape == tensor.shape, name
        assert bits(got.numpy()) == bits(tensor.numpy()), name
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary left


def test_the_name_decides_the_format_in_any_case(tmp_path):
    state = {"w": tg.tensor([1.0, 2.0])}
    tg.save(state, tmp_path / "A.SafeTensors")
    assert (tmp_path / "A.SafeTensors").read_bytes()[8:9] == b"{"
    assert tg.load(tmp_path / "A.SafeTensors")["w"].tolist() == [1.0, 2.0]
    tg.save(state, tmp_path / "a.npz")
    assert (tmp_path / "a.npz").read_bytes()[:2] == b"PK"


def test_load_reads_file_objects_by_name_or_by_content(tmp_path):
    path = tmp_path / "m.safetensors"
    tg.save({"w": tg.tensor([1, 2])}, path)
    with open(path, "rb") as file:
        assert tg.load(file)["w"].tolist() == [1, 2]
    assert tg.load(io.BytesIO(path.read_bytes()))["w"].dtype == tg.int64  # no name: the bytes say
    tg.save({"w": tg.tensor([1, 2])}, tmp_path / "c.npz")
    assert tg.load(io.BytesIO((tmp_path / "c.npz").read_bytes()))["w"].tolist() == [1, 2]


@pytest.mark.parametrize("state, match", [
    ({"nested": {"w": tg.Tensor([1.0])}}, r"'nested' is of type dict.*\.npz"),
    ({"w": np.ones(2, np.float32)}, r"'w' is of type ndarray.*\.npz"),
    ({"epoch": 3}, r"'epoch' is of type int.*\.npz"),
    ({"w": tg.Tensor([1.0]), "tag": "x"}, r"'tag' is of type str"),
    ({"w": None}, r"NoneType"),
    ({0: tg.Tensor([1.0])}, r"string names.*got the key 0.*\.npz"),
    ({("a", 1): tg.Tensor([1.0])}, r"string names"),
])
def test_save_refuses_what_safetensors_cannot_hold_before_writing(tmp_path, state, match):
    with pytest.raises(TypeError, match=match):
        tg.save(state, tmp_path / "m.safetensors")
    assert os.listdir(tmp_path) == []


def test_metadata_is_saved_and_read_from_the_header_alone(tmp_path):
    path = tmp_path / "m.safetensors"
    tg.save({"w": tg.tensor([1.0])}, path, metadata={"epoch": "3", "note": "ü, \"quoted\""})
    assert serialization.load_metadata(path) == {"epoch": "3", "note": "ü, \"quoted\""}
    buffer = io.BytesIO(b"junk" + path.read_bytes())
    buffer.seek(4)  # file objects are read from their current position
    assert serialization.load_metadata(buffer) == {"epoch": "3", "note": "ü, \"quoted\""}
    buffer.seek(4)
    assert tg.load(buffer)["w"].tolist() == [1.0]
    tg.save({"w": tg.tensor([1.0])}, path)
    assert serialization.load_metadata(path) == {}
    data = path.read_bytes()
    path.write_bytes(data[:-1])  # the header is fine, the data is cut: the header check still sees it
    with pytest.raises(tg.CheckpointError, match="offsets"):
        serialization.load_metadata(path)
    tg.save({"w": tg.tensor([1.0])}, tmp_path / "c.npz")
    with pytest.raises(ValueError, match="not a .safetensors file"):
        serialization.load_metadata(tmp_path / "c.npz")
    with pytest.raises(TypeError, match="path"):
        serialization.load_metadata(3)


@pytest.mark.parametrize("metadata, error", [({"epoch": 3}, TypeError), ({1: "a"}, TypeError),
                                             ([("a", "b")], TypeError), ("epoch=3", TypeError)])
def test_metadata_must_map_strings_to_strings(tmp_path, metadata, error):
    with pytest.raises(error, match="metadata"):
        tg.save({"w": tg.tensor([1.0])}, tmp_path / "m.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_names_and_metadata_that_are_not_unicode_are_refused_before_writing(tmp_path):
    for state, metadata in (({"w\ud800": tg.tensor([1.0])}, None),
                            ({"w": tg.tensor([1.0])}, {"k": "\udfff"})):
        with pytest.raises(ValueError, match="not valid Unicode"):
            tg.save(state, tmp_path / "m.safetensors", metadata=metadata)
    assert os.listdir(tmp_path) == []


def test_metadata_with_an_npz_and_the_reserved_name_are_refused(tmp_path):
    with pytest.raises(ValueError, match="metadata= is for .safetensors"):
        tg.save({"w": tg.tensor([1.0])}, tmp_path / "c.npz", metadata={"a": "b"})
    with pytest.raises(ValueError, match="reserved"):
        tg.save({"__metadata__": tg.tensor([1.0])}, tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="reserved"):
        safetensors_format.encode({"__metadata__": np.zeros(1)})
    assert os.listdir(tmp_path) == []


# ---- the same atomic write as .npz checkpoints ------------------------------------------------
def test_safetensors_saves_use_the_atomic_write(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    tg.save({"w": tg.tensor([1.0])}, path)
    os.chmod(path, 0o640)
    (tmp_path / f".m.safetensors.{'ab' * 16}.tmp").write_bytes(b"left by a killed save")
    tg.save({"w": tg.tensor([2.0])}, path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # the replaced file's mode
    assert os.listdir(tmp_path) == ["m.safetensors"]  # the leftover is gone

    def fail(prepared, file):
        file.write(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(serialization.safetensors_format.Prepared, "write_to", fail)
    with pytest.raises(OSError, match="disk full"):
        tg.save({"w": tg.tensor([3.0])}, path)
    monkeypatch.undo()
    assert tg.load(path)["w"].tolist() == [2.0] and os.listdir(tmp_path) == ["m.safetensors"]
    os.chmod(path, 0o444)
    with pytest.raises(PermissionError, match="read-only"):
        tg.save({"w": tg.tensor([4.0])}, path)
    os.chmod(path, 0o600)
    assert tg.load(path)["w"].tolist() == [2.0]


# ---- malformed files ----------------------------------------------------------------------------
def _outcome(data, expected):
    """'ok', 'changed' (a valid file saying something else), 'checkpoint error', or what escaped."""
    buffer = io.BytesIO(data)
    buffer.name = "fuzz.safetensors"
    try:
        loaded = tg.load(buffer, device="cpu")
    except tg.CheckpointError:
        return "checkpoint error"
    except Exception as error:  # noqa: BLE001 - the point of the test: name whatever escapes
        return f"{type(error).__name__}: {error}"
    same = loaded.keys() == expected.keys() and all(
        loaded[k].dtype == expected[k].dtype and bits(loaded[k].numpy()) == bits(expected[k])
        for k in expected)
    return "ok" if same else "changed"


def test_every_flipped_bit_and_every_truncation_gives_checkpoint_error_or_a_valid_file(tmp_path):
    state = {"w": tg.tensor([1.0, -2.0]), "mask": tg.tensor([True, False]), "n": tg.tensor(3)}
    path = tmp_path / "m.safetensors"
    tg.save(state, path, metadata={"k": "v"})
    data = path.read_bytes()
    expected = {name: t.numpy() for name, t in state.items()}
    assert _outcome(data, expected) == "ok"
    outcomes: dict = {}
    for index in range(len(data)):
        for bit in range(8):  # every bit of every byte
            damaged = bytearray(data)
            damaged[index] ^= 1 << bit
            outcomes.setdefault(_outcome(bytes(damaged), expected), []).append((index, bit))
    escaped = {what: where[:3] for what, where in outcomes.items()
               if what not in ("ok", "changed", "checkpoint error")}
    assert not escaped
    # the format has no checksum: a flipped bit may give other values, another name or other metadata,
    # but never a tensor that does not fit its data
    header_end = 8 + struct.unpack("<Q", data[:8])[0]
    undetectable = set(range(header_end, len(data)))
    for text in (b'"w"', b'"mask"', b'"n"', b'"k":"v"'):
        start = data.index(text, 8, header_end)
        undetectable |= set(range(start + 1, start + len(text) - 1))
    assert {index for index, _ in outcomes["changed"]} <= undetectable
    mask_byte = header_end + 8  # mask follows w (8 bytes): any flip other than the low bit is not a bool
    assert {(mask_byte, bit) for bit in range(1, 8)} <= set(outcomes["checkpoint error"])
    for length in range(len(data)):
        assert _outcome(data[:length], expected) == "checkpoint error", length
    assert _outcome(data + b"\0", expected) == "checkpoint error"


W = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}


@pytest.mark.parametrize("data, match", [
    (b"", "too short"),
    (b"\x08\0\0\0", "too short"),
    (struct.pack("<Q", 2**64 - 1) + b"{}", "limit"),
    (header_file({"w": W}, b"\0" * 8, length=10**6), "only .* follow"),
    (header_file(b"\xff\xfe{}", b""), "UTF-8 JSON"),
    (header_file(b"[" * 100_000 + b"]" * 100_000), "UTF-8 JSON"),
    (header_file(b'{"w": ' + b"1" * 5000 + b"}"), "UTF-8 JSON"),  # an integer too long to convert
    (header_file(b'{"w": NaN}'), "not JSON"),
    (header_file(b'{"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "w": {}}', b"\0" * 8),
     "more than once"),
    (header_file(b"[]"), "not a JSON object"),
    (header_file({"w": {"dtype": "F32", "shape": [2]}}, b"\0" * 8), "exactly dtype"),
    (header_file({"w": [1, 2]}), "exactly dtype"),
    (header_file({"w": {**W, "dtype": "F8_E4M3"}}, b"\0" * 8), "not supported"),
    (header_file({"w": {**W, "dtype": 4}}, b"\0" * 8), "not supported"),
    (header_file({"w": {**W, "shape": [2**40, 2**40]}}, b"\0" * 8), "do not hold"),
    (header_file({"w": {**W, "shape": [2**64]}}, b"\0" * 8), "64-bit"),
    (header_file({"w": {**W, "shape": [-2]}}, b"\0" * 8), "64-bit"),
    (header_file({"w": {**W, "shape": [True, 2]}}, b"\0" * 8), "64-bit"),
    (header_file({"w": {**W, "shape": [2.0]}}, b"\0" * 8), "64-bit"),
    (header_file({"w": {**W, "shape": [1] * 65}}, b"\0" * 8), "at most 64"),
    (header_file({"w": {**W, "data_offsets": [0, 2**63]}}, b"\0" * 8), "do not hold"),
    (header_file({"w": {**W, "data_offsets": [8, 0]}}, b"\0" * 8), "do not hold"),
    (header_file({"w": {**W, "data_offsets": [-8, 0]}}, b"\0" * 8), "64-bit"),
    (header_file({"w": {**W, "data_offsets": [0, 8, 16]}}, b"\0" * 8), "pair"),
    (header_file({"w": W, "v": W}, b"\0" * 8), "overlap"),  # two tensors on the same bytes
    (header_file({"w": W, "v": {**W, "data_offsets": [4, 12]}}, b"\0" * 12), "do not hold|overlap"),
    (header_file({"w": {**W, "data_offsets": [8, 16]}}, b"\0" * 16), "gap"),  # 8 bytes before w
    (header_file({"w": W}, b"\0" * 12), "belong to none"),
    (header_file({"__metadata__": {"a": 1}, "w": W}, b"\0" * 8), "__metadata__"),
    (header_file({"__metadata__": [], "w": W}, b"\0" * 8), "__metadata__"),
    (header_file({"b": {"dtype": "BOOL", "shape": [2], "data_offsets": [0, 2]}}, b"\x01\x02"), "BOOL"),
    (header_file({"x" * 10_000: {**W, "dtype": "F9"}}, b"\0" * 8), r"x{77}\.\.\.: dtype"),
])
def test_forged_files_give_checkpoint_error(tmp_path, data, match):
    path = tmp_path / "forged.safetensors"
    path.write_bytes(data)
    with pytest.raises(tg.CheckpointError, match=match):
        tg.load(path)
    with pytest.raises(tg.CheckpointError):
        tg.load(io.BytesIO(data))  # no name: recognised by its bytes, or refused as a .npz
    if "BOOL" not in match:  # the header's faults: found by reading the header alone
        with pytest.raises(tg.CheckpointError, match=match):
            serialization.load_metadata(path)


def test_a_file_out_of_order_but_covering_its_data_exactly_is_read(tmp_path):
    # the header may list tensors in any order; what counts is that their bytes tile the data
    data = header_file({"b": {"dtype": "I32", "shape": [1], "data_offsets": [4, 8]},
                        "a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},
                        "z": {"dtype": "F32", "shape": [0, 5], "data_offsets": [4, 4]}},
                       struct.pack("<ii", 1, 2))
    (tmp_path / "m.safetensors").write_bytes(data)
    loaded = tg.load(tmp_path / "m.safetensors")
    assert list(loaded) == ["b", "a", "z"] and loaded["a"].tolist() == [1] and loaded["b"].tolist() == [2]
    assert loaded["z"].shape == (0, 5)


def test_dtypes_tensors_lack_are_widened_exactly(tmp_path):
    half = np.array([0.5, -65504.0, 6e-8], np.float16)
    bf16 = np.array([0x3F80, 0xC0A0, 0x7F80], "<u2")  # 1.0, -5.0, inf as bfloat16 bits
    body = half.tobytes() + bf16.tobytes() + np.array([255, 0], np.uint8).tobytes() \
        + np.array([2**63 - 1], "<u8").tobytes()
    header = {"h": {"dtype": "F16", "shape": [3], "data_offsets": [0, 6]},
              "bf": {"dtype": "BF16", "shape": [3], "data_offsets": [6, 12]},
              "u8": {"dtype": "U8", "shape": [2], "data_offsets": [12, 14]},
              "u64": {"dtype": "U64", "shape": [1], "data_offsets": [14, 22]}}
    (tmp_path / "m.safetensors").write_bytes(header_file(header, body))
    loaded = tg.load(tmp_path / "m.safetensors")
    assert loaded["h"].dtype == tg.float32 and loaded["h"].tolist() == half.astype(np.float32).tolist()
    assert loaded["bf"].dtype == tg.float32 and loaded["bf"].tolist() == [1.0, -5.0, float("inf")]
    assert loaded["u8"].dtype == tg.int64 and loaded["u8"].tolist() == [255, 0]
    assert loaded["u64"].tolist() == [2**63 - 1]
    too_big = header_file({"u64": {"dtype": "U64", "shape": [1], "data_offsets": [0, 8]}},
                          np.array([2**63], "<u8").tobytes())
    (tmp_path / "big.safetensors").write_bytes(too_big)
    with pytest.raises(tg.CheckpointError, match="beyond int64"):
        tg.load(tmp_path / "big.safetensors")


def test_the_encoder_keeps_zero_d_arrays_and_any_memory_layout():
    arrays = {"scalar": np.array(5, np.int64), "fortran": np.asfortranarray(np.arange(6.0).reshape(2, 3)),
              "strided": np.arange(10, dtype=np.int32)[::-3], "big_endian": np.arange(3, dtype=">f4")}
    decoded, metadata = safetensors_format.decode(safetensors_format.encode(arrays))
    assert metadata == {}
    for name, array in arrays.items():
        assert decoded[name].shape == array.shape and decoded[name].tolist() == array.tolist(), name
        assert decoded[name].dtype == array.dtype.newbyteorder("="), name
    with pytest.raises(TypeError, match="complex128"):
        safetensors_format.encode({"c": np.zeros(2, complex)})


def test_a_npz_checkpoint_under_a_safetensors_name_is_refused_with_a_hint(tmp_path):
    tg.save({"w": tg.tensor([1.0])}, tmp_path / "c.npz")
    os.rename(tmp_path / "c.npz", tmp_path / "c.safetensors")
    with pytest.raises(tg.CheckpointError, match="not a valid safetensors file.*a .npz checkpoint"):
        tg.load(tmp_path / "c.safetensors")


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        tg.load(tmp_path / "nothing.safetensors")
    with pytest.raises(FileNotFoundError):
        serialization.load_metadata(tmp_path / "nothing.safetensors")
    with pytest.raises(ValueError, match="unknown device"):
        tg.load(tmp_path / "nothing.safetensors", device="tpu")
    with pytest.raises(TypeError, match="expected a dict"):
        tg.save([tg.tensor(1.0)], tmp_path / "m.safetensors")


_json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(allow_nan=False),
                       st.text(max_size=5), st.sampled_from(["F32", "I64", "BOOL", "BF16", "F16", "U64"]))
_json = st.recursive(_json_leaf, lambda inner: st.lists(inner, max_size=4)
                     | st.dictionaries(st.text(max_size=4), inner, max_size=4), max_leaves=12)
_small = st.integers(0, 24)
_entry = st.one_of(
    st.fixed_dictionaries({"dtype": st.sampled_from(list(safetensors_format.ITEMSIZE) + ["F8_E4M3", "x"]),
                           "shape": st.lists(st.integers(0, 4), max_size=3),
                           "data_offsets": st.lists(_small, min_size=2, max_size=2)}),
    _json)


@given(header=st.dictionaries(st.sampled_from(["a", "b", "c", "__metadata__"]), _entry, max_size=4),
       body=st.binary(max_size=32))
def test_any_header_and_data_give_arrays_that_fit_or_checkpoint_error(header, body):
    data = header_file(header, body)
    buffer = io.BytesIO(data)
    buffer.name = "random.safetensors"
    try:
        loaded = tg.load(buffer, device="cpu")
    except tg.CheckpointError:
        return
    for name, tensor in loaded.items():  # what loads is exactly what the header promised
        entry = header[name]
        assert tensor.shape == tuple(entry["shape"])
        begin, end = entry["data_offsets"]
        assert end - begin == tensor.numel() * safetensors_format.ITEMSIZE[entry["dtype"]]


@given(st.binary(max_size=64))
def test_random_bytes_give_checkpoint_error_or_a_file(data):
    for name in ("random.safetensors", None):
        buffer = io.BytesIO(data)
        if name:
            buffer.name = name
        try:
            tg.load(buffer, device="cpu")
        except tg.CheckpointError:
            pass
