"""tg.save / tg.load: exact round trips, atomic writes, clear errors for bad files, untouched models."""

import json
import os
import zipfile

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import serialization


def bits(array):
    """The raw bytes of an array, so that -0.0, NaN and subnormals compare exactly."""
    return np.ascontiguousarray(array).view(np.uint8).tobytes()


def model_and_optimizer(device, dtype=np.float32):
    tg.manual_seed(3)
    model = tg.nn.Sequential(tg.nn.Linear(3, 5, device=device, dtype=dtype), tg.nn.Tanh(),
                             tg.nn.Linear(5, 2, device=device, dtype=dtype))
    return model, tg.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)


def train(model, opt, steps, device):
    x = tg.Tensor(np.linspace(-1, 1, 12).reshape(4, 3), device=device)
    for _ in range(steps):
        opt.zero_grad()
        tg.nn.MSELoss()(model(x), np.ones((4, 2))).backward()
        opt.step()


def test_nested_state_round_trips_exactly(tmp_path, device):
    special = np.array([0.0, -0.0, np.nan, np.inf, -np.inf, 1e-45, 3.4e38], np.float32)
    state = {
        "model": {"0.weight": tg.Tensor(special, device=device), "odd/key.ü": tg.Tensor(
            np.arange(6.0).reshape(2, 3), device=device, requires_grad=True)},
        "arrays": {"steps": np.arange(4, dtype=np.int64), "mask": np.array([True, False]), "empty": {}},
        "epoch": 7, "best": float("nan"), "lr": 1e-3, "done": False, "name": "run-1", "note": None,
        "big": 2**62, "zero_size": np.zeros((0, 3)),
        "groups": [{"params": [0, 1], "betas": (0.9, 0.999)}, []], "by_index": {0: {"step": 3}, 7: None},
    }
    path = tmp_path / "ckpt.npz"
    tg.save(state, path)
    loaded = tg.load(path, device=device)
    assert list(loaded) == list(state) and list(loaded["model"]) == list(state["model"])
    weight = loaded["model"]["0.weight"]
    assert isinstance(weight, tg.Tensor) and weight.device == device and weight.dtype == np.float32
    assert bits(weight.numpy()) == bits(special) and not weight.requires_grad
    assert loaded["model"]["odd/key.ü"].requires_grad and loaded["model"]["odd/key.ü"].dtype == np.float64
    np.testing.assert_array_equal(loaded["arrays"]["steps"], np.arange(4))
    assert loaded["arrays"]["steps"].dtype == np.int64 and loaded["arrays"]["mask"].dtype == np.bool_
    assert loaded["arrays"]["empty"] == {} and loaded["zero_size"].shape == (0, 3)
    assert loaded["epoch"] == 7 and type(loaded["epoch"]) is int and np.isnan(loaded["best"])
    assert (loaded["lr"], loaded["done"], loaded["name"], loaded["note"], loaded["big"]) == (
        1e-3, False, "run-1", None, 2**62)
    assert loaded["groups"] == [{"params": [0, 1], "betas": (0.9, 0.999)}, []]
    assert type(loaded["groups"][0]["betas"]) is tuple and loaded["by_index"] == {0: {"step": 3}, 7: None}


def test_cpu_to_device_to_cpu_is_exact(tmp_path, device):
    rng = np.random.default_rng(0)
    values = np.concatenate([rng.standard_normal(100), [1e-40, -0.0, 3.4e38]]).astype(np.float32)
    tg.save({"w": tg.Tensor(values, device="cpu")}, tmp_path / "a.npz")
    on_device = tg.load(tmp_path / "a.npz", device=device)["w"]
    assert on_device.device == device
    tg.save({"w": on_device}, tmp_path / "b.npz")
    back = tg.load(tmp_path / "b.npz", device="cpu")["w"]
    assert back.device == "cpu" and bits(back.numpy()) == bits(values)


def test_training_resumes_bit_for_bit_from_a_checkpoint(tmp_path, device):
    model, opt = model_and_optimizer(device)
    train(model, opt, 3, device)
    tg.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "step": 3}, tmp_path / "c.npz")
    train(model, opt, 4, device)
    expected = [p.numpy() for p in model.parameters()]

    resumed, resumed_opt = model_and_optimizer(device)
    checkpoint = tg.load(tmp_path / "c.npz", device=device)
    resumed.load_state_dict(checkpoint["model"])
    resumed_opt.load_state_dict(checkpoint["optimizer"])
    assert checkpoint["step"] == 3 and resumed_opt.nesterov is True and resumed_opt.lr == 0.1
    train(resumed, resumed_opt, 4, device)
    for p, e in zip(resumed.parameters(), expected):
        assert bits(p.numpy()) == bits(e)


def test_a_failed_save_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.npz"
    tg.save({"v": np.arange(3.0)}, path)
    before = path.read_bytes()

    def crash(file, *args, **kwargs):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt  # e.g. the user pressed Ctrl-C while the archive was being written

    monkeypatch.setattr(serialization.np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        tg.save({"v": np.arange(5.0)}, path)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["ckpt.npz"]


def test_save_syncs_the_file_before_renaming(tmp_path, monkeypatch):
    calls = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(serialization.os, "fsync", lambda fd: (calls.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(serialization.os, "replace",
                        lambda a, b: (calls.append("replace"), real_replace(a, b))[1])
    tg.save({"v": np.ones(2)}, tmp_path / "x.npz")
    assert calls[:2] == ["fsync", "replace"]


def test_save_refuses_what_it_cannot_store_before_writing(tmp_path):
    for bad in ({"a": {1.5: 2}}, {"a": [{True: 1}]}, {"a": np.array(["text"])}, {"a": object()},
                {"a": np.array([None])}, {"a": 2**70}, {"a": {1, 2}}):
        with pytest.raises(TypeError, match="save: "):
            tg.save(bad, tmp_path / "bad.npz")
    with pytest.raises(TypeError, match="expected a dict"):
        tg.save([np.ones(2)], tmp_path / "bad.npz")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("cut", [0, 1, 30, 0.5, -1])
def test_truncated_files_raise_checkpoint_error(tmp_path, cut):
    path = tmp_path / "ckpt.npz"
    tg.save({"w": np.arange(100.0), "meta": {"epoch": 1}}, path)
    data = path.read_bytes()
    end = int(len(data) * cut) if isinstance(cut, float) else cut % len(data) if cut < 0 else cut
    path.write_bytes(data[:end])
    with pytest.raises(tg.CheckpointError, match="truncated or damaged"):
        tg.load(path)


def test_corrupted_data_raises_checkpoint_error(tmp_path):
    path = tmp_path / "ckpt.npz"
    tg.save({"w": np.zeros(1000)}, path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside the zeros of "w"
    path.write_bytes(bytes(data))
    with pytest.raises(tg.CheckpointError, match="damaged"):
        tg.load(path)


def _write_npz(path, **arrays):
    with open(path, "wb") as file:
        np.savez(file, **arrays)


def _manifest(entries, version=1, form="tinygrad_gpu-checkpoint"):
    return np.array(json.dumps({"format": form, "version": version, "entries": entries}))


@pytest.mark.parametrize("kind", ["text", "npy", "plain_npz", "other_zip", "other_format", "future",
                                  "shape_mismatch", "missing_array", "bad_json", "bad_kind"])
def test_foreign_or_altered_files_raise_checkpoint_error(tmp_path, kind):
    path = tmp_path / "f.npz"
    entry = {"path": ["w"], "kind": "tensor", "name": "e0", "dtype": "<f4", "shape": [2]}
    if kind == "text":
        path.write_text("epoch,loss\n1,0.5\n")
    elif kind == "npy":
        with open(path, "wb") as file:
            np.save(file, np.ones(3))
    elif kind == "plain_npz":
        _write_npz(path, weights=np.ones(3))
    elif kind == "other_zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "hello")
    elif kind == "other_format":
        _write_npz(path, manifest=_manifest([], form="someone-else"))
    elif kind == "future":
        _write_npz(path, manifest=_manifest([], version=99))
    elif kind == "shape_mismatch":
        _write_npz(path, manifest=_manifest([entry]), e0=np.ones(3, np.float32))
    elif kind == "missing_array":
        _write_npz(path, manifest=_manifest([entry]))
    elif kind == "bad_json":
        _write_npz(path, manifest=np.array("{not json"))
    elif kind == "bad_kind":
        _write_npz(path, manifest=_manifest([dict(entry, kind="pickle")]), e0=np.ones(2, np.float32))
    with pytest.raises(tg.CheckpointError) as info:
        tg.load(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_missing_file_and_bad_arguments(tmp_path):
    with pytest.raises(FileNotFoundError):
        tg.load(tmp_path / "nothing.npz")
    with pytest.raises(TypeError, match="path"):
        tg.load(3)
    with pytest.raises(ValueError, match="unknown device"):
        tg.load(tmp_path / "nothing.npz", device="tpu")


def test_load_state_dict_checks_dtype_and_leaves_the_model_untouched(device):
    model, _ = model_and_optimizer(device)
    before = [p.numpy() for p in model.parameters()]
    state = {name: t.numpy() for name, t in model.state_dict().items()}
    state["0.bias"] = np.full(5, 9.0, np.float32)  # valid, but must not be applied on error
    state["2.weight"] = state["2.weight"].astype(np.complex64)
    with pytest.raises(ValueError, match=r"2.weight is complex64 in the state but float32 in the model"):
        model.load_state_dict(state)
    with pytest.raises(TypeError, match="expected a dict"):
        model.load_state_dict([1, 2])
    for p, old in zip(model.parameters(), before):
        np.testing.assert_array_equal(p.numpy(), old)
    wide, _ = model_and_optimizer(device, dtype=np.float64)
    wide.load_state_dict({name: t.numpy() for name, t in model.state_dict().items()})  # exact
    np.testing.assert_array_equal(wide.parameters()[0].numpy(), before[0].astype(np.float64))
    model.load_state_dict({name: t.numpy() + 1e-12 for name, t in wide.state_dict().items()})  # rounded
    assert model.parameters()[0].dtype == np.float32
    np.testing.assert_array_equal(model.parameters()[0].numpy(), before[0])


def test_optimizer_state_survives_save_and_load_and_is_validated(tmp_path, device):
    model, opt = model_and_optimizer(device)
    train(model, opt, 1, device)
    tg.save({"optimizer": opt.state_dict()}, tmp_path / "o.npz")
    good = tg.load(tmp_path / "o.npz", device=device)["optimizer"]
    assert list(good["state"]) == [0, 1, 2, 3] and good["param_groups"][0]["nesterov"] is True
    before = [b.copy() for b in opt.buffers]

    def changed(edit):
        state = tg.load(tmp_path / "o.npz", device=device)["optimizer"]
        edit(state)
        return state

    for edit, error in [(lambda s: s["param_groups"][0].update(lr=-1.0), ValueError),
                        (lambda s: s["param_groups"][0].update(momentum="fast"), TypeError),
                        (lambda s: s["param_groups"][0].update(lr=10**400), ValueError),
                        (lambda s: s["state"][1].update(momentum_buffer=np.ones((2, 2))), ValueError)]:
        with pytest.raises(error):
            opt.load_state_dict(changed(edit))
    for buffer, old in zip(opt.buffers, before):  # nothing changed
        np.testing.assert_array_equal(tg.Tensor(buffer).numpy(), tg.Tensor(old).numpy())
    opt.load_state_dict(good)


def test_int_and_bool_tensors_and_arrays_round_trip(tmp_path, device):
    state = {"i64": tg.tensor(np.array([-2**63, 0, 2**63 - 1], np.int64), device=device),
             "i32": tg.tensor(np.array([[-2**31], [2**31 - 1]], np.int32), device=device),
             "mask": tg.tensor([True, False, True], device=device), "count": tg.tensor(4, device=device),
             "empty": tg.tensor(np.zeros((0, 2), np.int32), device=device),
             "arrays": [np.array([1, 2], np.int32), np.array([[True]]), np.array(-5, np.int64)]}
    tg.save(state, tmp_path / "ckpt.npz")
    loaded = tg.load(tmp_path / "ckpt.npz", device=device)
    for name in ("i64", "i32", "mask", "count", "empty"):
        got = loaded[name]
        assert isinstance(got, tg.Tensor) and got.device == device and not got.requires_grad, name
        assert got.dtype == state[name].dtype and got.shape == state[name].shape, name
        assert bits(got.numpy()) == bits(state[name].numpy()), name
    for got, array in zip(loaded["arrays"], state["arrays"]):
        assert isinstance(got, np.ndarray) and got.dtype == array.dtype and bits(got) == bits(array)


def test_a_module_with_an_int64_buffer_round_trips(tmp_path, device):
    model = tg.nn.Sequential(tg.nn.Conv2d(2, 3, 3, device=device), tg.nn.BatchNorm2d(3, device=device))
    x = tg.Tensor(np.random.default_rng(0).standard_normal((2, 2, 5, 5)), device=device)
    for _ in range(3):
        model(x)
    assert model[1].num_batches_tracked.item() == 3
    tg.save({"model": model.state_dict()}, tmp_path / "ckpt.npz")
    fresh = tg.nn.Sequential(tg.nn.Conv2d(2, 3, 3, device=device), tg.nn.BatchNorm2d(3, device=device))
    fresh.load_state_dict(tg.load(tmp_path / "ckpt.npz", device=device)["model"])
    assert fresh[1].num_batches_tracked.dtype == tg.int64 and fresh[1].num_batches_tracked.item() == 3
    for (name, a), b in zip(model.state_dict().items(), fresh.state_dict().values()):
        assert a.dtype == b.dtype and bits(a.numpy()) == bits(b.numpy()), name
    model.eval()
    fresh.eval()
    np.testing.assert_array_equal(fresh(x).numpy(), model(x).numpy())


def test_a_manifest_asking_for_an_integer_tensor_with_grad_is_refused(tmp_path):
    path = tmp_path / "forged.npz"
    tg.save({"n": tg.tensor([1, 2])}, path)
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    manifest = json.loads(str(np.load(path)["manifest"]))
    manifest["entries"][0]["requires_grad"] = True
    import io

    buffer = io.BytesIO()
    np.save(buffer, np.array(json.dumps(manifest)))
    members["manifest.npy"] = buffer.getvalue()
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    with pytest.raises(tg.CheckpointError, match="int64 has requires_grad True"):
        tg.load(path)


@pytest.mark.parametrize("value, match", [
    (np.array(2.5), "float64 in the state but int64"),
    (3.7, "float64 in the state but int64"),  # a Python float is not truncated either
    (np.array(2**63, np.uint64), "do not fit"),
    (2**63 + 5, "do not fit"),
    (2**70, "only real numbers"),
    (np.array(1 + 2j), "complex128"),
    ("3", "only real numbers"),
])
def test_an_int64_buffer_takes_only_integers_that_fit(device, value, match):
    bn = tg.nn.BatchNorm2d(2, device=device)
    bn.num_batches_tracked.array[...] = 4
    state = {**bn.state_dict(), "num_batches_tracked": value, "weight": np.full(2, 9.0, np.float32)}
    with pytest.raises(ValueError, match=match):
        bn.load_state_dict(state)
    assert bn.num_batches_tracked.item() == 4 and bn.weight.tolist() == [1.0, 1.0]  # nothing changed


@pytest.mark.parametrize("value", [np.array(7, np.int64), np.array(7, np.int32), np.array(7, np.uint64),
                                   np.array(7, np.uint8), 7, np.array(7)])
def test_an_int64_buffer_takes_arrays_tensors_and_numbers_of_integer_dtype(device, value):
    bn = tg.nn.BatchNorm2d(2, device=device)
    for given in (value, tg.tensor(value, device=device)):
        bn.num_batches_tracked.array[...] = 0
        bn.load_state_dict({**bn.state_dict(), "num_batches_tracked": given})
        assert bn.num_batches_tracked.dtype == tg.int64 and bn.num_batches_tracked.item() == 7


def test_an_int32_buffer_takes_int64_values_that_fit(device):
    module = tg.nn.Module()
    module.register_buffer("ids", tg.tensor(np.zeros(2, np.int32), device=device))
    module.load_state_dict({"ids": np.array([-2**31, 2**31 - 1], np.int64)})
    assert module.ids.dtype == tg.int32 and module.ids.tolist() == [-2**31, 2**31 - 1]
    with pytest.raises(ValueError, match=r"ids is int64 in the state but int32 .* 0\.\.2147483648 do not"):
        module.load_state_dict({"ids": np.array([0, 2**31], np.int64)})
    assert module.ids.tolist() == [-2**31, 2**31 - 1]
