"""Checkpoints that are safe: any damaged file gives CheckpointError, saving never widens permissions,
never replaces a read-only file, and cleans up after a killed save."""

import io
import json
import os
import stat
import zipfile

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import serialization

STATE = {"w": tg.Tensor([1.0, -2.0], device="cpu"), "meta": {"epoch": 3, "tag": "x", "ok": [True, None]}}


def _same(loaded):
    return (loaded["w"].tolist() == [1.0, -2.0] and loaded["w"].dtype == np.float32
            and loaded["meta"] == {"epoch": 3, "tag": "x", "ok": [True, None]})


def _outcome(data):
    """'ok' for a correct load, 'checkpoint error' for CheckpointError; anything else is returned as is."""
    try:
        loaded = tg.load(io.BytesIO(data), device="cpu")  # the parser a file goes through, minus the disk
    except tg.CheckpointError:
        return "checkpoint error"
    except Exception as error:  # noqa: BLE001 - the point of the test: name whatever escapes
        return f"{type(error).__name__}: {error}"
    return "ok" if _same(loaded) else "wrong values"


def test_every_flipped_bit_and_every_truncation_gives_checkpoint_error_or_the_right_values(tmp_path):
    path = tmp_path / "ckpt.npz"
    tg.save(STATE, path)
    data = path.read_bytes()
    assert _outcome(data) == "ok"
    outcomes = {}
    # a dense sample: every byte, with the flipped bit cycling through all eight positions
    for index in range(len(data)):
        damaged = bytearray(data)
        damaged[index] ^= 1 << (index % 8)
        outcomes.setdefault(_outcome(bytes(damaged)), []).append(f"flip byte {index}")
    for length in range(len(data)):
        outcomes.setdefault(_outcome(data[:length]), []).append(f"cut at {length}")
    allowed = ("ok", "checkpoint error")
    unexpected = {what: where[:3] for what, where in outcomes.items() if what not in allowed}
    assert not unexpected
    assert len(outcomes["checkpoint error"]) > len(data)  # every truncation at least


def _npy(header: dict, body: bytes) -> bytes:
    text = repr(header).encode("latin1")
    text += b" " * ((64 - (10 + len(text) + 1) % 64) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text + body


def _zip(path, members):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)


def _manifest_npy(text: str) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.array(text))
    return buffer.getvalue()


def test_a_header_claiming_two_to_the_forty_elements_is_refused_before_allocating(tmp_path):
    path = tmp_path / "huge.npz"
    entry = {"path": ["w"], "kind": "array", "name": "e0", "dtype": "<f8", "shape": [2**40]}
    manifest = json.dumps({"format": "tinygrad_gpu-checkpoint", "version": 1, "entries": [entry]})
    _zip(path, {"manifest.npy": _manifest_npy(manifest),
                "e0.npy": _npy({"descr": "<f8", "fortran_order": False, "shape": (2**40,)}, b"\0" * 16)})
    with pytest.raises(tg.CheckpointError, match="claims shape"):
        tg.load(path)


@pytest.mark.parametrize("header", [{"descr": "|O", "fortran_order": False, "shape": (1,)},
                                    {"descr": "<f8", "fortran_order": False, "shape": ((((1,),),),)},
                                    "{" * 5000])
def test_forged_npy_headers_give_checkpoint_error(tmp_path, header):
    path = tmp_path / "forged.npz"
    body = _npy(header, b"\0" * 8) if isinstance(header, dict) else (
        b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode())
    _zip(path, {"manifest.npy": _manifest_npy("{}"), "e0.npy": body})
    with pytest.raises(tg.CheckpointError):
        tg.load(path)


def test_compressed_or_foreign_members_give_checkpoint_error(tmp_path):
    path = tmp_path / "c.npz"
    np.savez_compressed(path, manifest=np.array("{}"))
    with pytest.raises(tg.CheckpointError, match="compressed"):
        tg.load(path)


def test_a_manifest_nested_thousands_deep_gives_checkpoint_error(tmp_path):
    deep = "[" * 5000 + "]" * 5000
    chain = [{"path": ["k"] * n, "kind": "dict"} for n in range(1, serialization.MAX_DEPTH + 50)]
    for text in ('{"format": "tinygrad_gpu-checkpoint", "version": 1, "entries": ' + deep + "}",
                 json.dumps({"format": "tinygrad_gpu-checkpoint", "version": 1, "entries": chain})):
        path = tmp_path / "deep.npz"
        _zip(path, {"manifest.npy": _manifest_npy(text)})
        with pytest.raises(tg.CheckpointError, match="not valid JSON|valid path|no list of entries"):
            tg.load(path)


def test_save_refuses_nesting_deeper_than_load_reads(tmp_path):
    deep: dict = {}
    inner = deep
    for _ in range(serialization.MAX_DEPTH + 1):
        inner["k"] = inner = {}
    with pytest.raises(ValueError, match="nested more than"):
        tg.save(deep, tmp_path / "deep.npz")
    loop: dict = {}
    loop["self"] = loop
    with pytest.raises(ValueError, match="inside itself"):
        tg.save(loop, tmp_path / "loop.npz")
    assert os.listdir(tmp_path) == []
    shallow: dict = {}
    inner = shallow
    for _ in range(serialization.MAX_DEPTH):
        inner["k"] = inner = {}
    tg.save(shallow, tmp_path / "ok.npz")
    assert tg.load(tmp_path / "ok.npz") == shallow


# ---- permissions -----------------------------------------------------------------------------
def test_save_keeps_the_mode_of_the_file_it_replaces(tmp_path):
    path = tmp_path / "ckpt.npz"
    tg.save({"a": 1}, path)
    for mode in (0o600, 0o640, 0o660):
        os.chmod(path, mode)
        tg.save({"a": 2}, path)
        assert stat.S_IMODE(os.stat(path).st_mode) == mode
    assert tg.load(path) == {"a": 2}


def test_save_refuses_to_replace_a_read_only_file(tmp_path):
    path = tmp_path / "ckpt.npz"
    tg.save({"a": 1}, path)
    for mode in (0o444, 0o400, 0o044):  # no write bit for the owner: refused even for root
        os.chmod(path, mode)
        with pytest.raises(PermissionError, match="read-only"):
            tg.save({"a": 2}, path)
        os.chmod(path, 0o600)
        assert tg.load(path) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["ckpt.npz"]


def test_save_refuses_a_file_os_access_says_it_cannot_write(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tg.save({"a": 1}, path)
    monkeypatch.setattr(serialization.os, "access", lambda p, how: how != os.W_OK)
    with pytest.raises(PermissionError, match="read-only"):
        tg.save({"a": 2}, path)
    monkeypatch.undo()
    assert tg.load(path) == {"a": 1}


def test_save_onto_a_directory_says_so(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError, match="is a directory"):
        tg.save({"a": 1}, tmp_path / "d")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        tg.save({"a": 1}, tmp_path / "missing" / "ckpt.npz")
    assert os.listdir(tmp_path) == ["d"]


# ---- leftovers of killed saves ----------------------------------------------------------------
def test_the_next_save_removes_what_a_killed_save_left(tmp_path):
    path = tmp_path / "ckpt.npz"
    leftovers = [f".ckpt.npz.{'ab' * 16}.tmp", f".ckpt.npz.{'0' * 32}.tmp"]
    kept = [f".other.npz.{'ab' * 16}.tmp",  # another checkpoint's
            f".ckpt.npz.{'ab' * 15}.tmp", f".ckpt.npz.{'AB' * 16}.tmp",  # not the library's pattern
            "ckpt.npz.tmp", f"ckpt.npz.{'ab' * 16}.tmp", "notes.txt"]
    for name in leftovers + kept:
        (tmp_path / name).write_bytes(b"half a checkpoint")
    os.symlink(tmp_path / "notes.txt", tmp_path / f".ckpt.npz.{'cd' * 16}.tmp")  # a link is never touched
    tg.save({"a": 1}, path)
    assert sorted(os.listdir(tmp_path)) == sorted(["ckpt.npz", *kept, f".ckpt.npz.{'cd' * 16}.tmp"])
    assert (tmp_path / "notes.txt").read_bytes() == b"half a checkpoint"


def test_a_save_in_progress_keeps_its_temporary(tmp_path, monkeypatch):
    pytest.importorskip("fcntl")
    path = tmp_path / "ckpt.npz"
    real_savez, seen = np.savez, []

    def save_beside(file, *args, **kwargs):
        if not seen:  # the first save only: a second save to the same path while this one writes
            seen.append("started")
            tg.save({"other": 2}, path)
            seen.extend(os.listdir(tmp_path))
        return real_savez(file, *args, **kwargs)

    monkeypatch.setattr(serialization.np, "savez", save_beside)
    tg.save({"first": 1}, path)
    assert any(name.endswith(".tmp") for name in seen)  # the first save's temporary survived
    assert os.listdir(tmp_path) == ["ckpt.npz"] and tg.load(path) == {"first": 1}


def test_load_reads_a_binary_file_object_and_refuses_a_text_one(tmp_path):
    tg.save(STATE, tmp_path / "ckpt.npz")
    buffer = io.BytesIO((tmp_path / "ckpt.npz").read_bytes())
    assert _same(tg.load(buffer, device="cpu"))
    with open(tmp_path / "ckpt.npz", "rb") as file:
        assert _same(tg.load(file, device="cpu"))
    with open(tmp_path / "ckpt.npz", encoding="latin1") as text:
        with pytest.raises(TypeError, match="binary file"):
            tg.load(text)


def test_a_manifest_with_a_non_boolean_requires_grad_is_refused(tmp_path):
    entry = {"path": ["w"], "kind": "tensor", "name": "e0", "dtype": "<f4", "shape": [1],
             "requires_grad": "no"}
    manifest = json.dumps({"format": "tinygrad_gpu-checkpoint", "version": 1, "entries": [entry]})
    buffer = io.BytesIO()
    np.savez(buffer, manifest=np.array(manifest), e0=np.ones(1, np.float32))
    with pytest.raises(tg.CheckpointError, match="requires_grad 'no'"):
        tg.load(io.BytesIO(buffer.getvalue()))
