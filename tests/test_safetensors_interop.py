"""Weights that travel: .safetensors files move between tinygrad_gpu, the safetensors package and PyTorch,
and the modules then compute what PyTorch's do."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tinygrad_gpu import serialization

safetensors_numpy = pytest.importorskip("safetensors.numpy")


def sample_state(device):
    return {"weight": tg.randn(3, 4, device=device), "double": tg.tensor(np.arange(5.0) / 3, device=device),
            "ids": tg.tensor(np.array([[1, -2**40]], np.int64), device=device),
            "small": tg.tensor(np.array([-7, 9], np.int32), device=device),
            "mask": tg.tensor([True, False], device=device), "count": tg.tensor(12, device=device),
            "empty": tg.zeros(0, 2, device=device)}


def test_the_package_reads_our_files(tmp_path, device):
    state = sample_state(device)
    path = str(tmp_path / "ours.safetensors")
    tg.save(state, path, metadata={"format": "pt", "epoch": "4"})
    arrays = safetensors_numpy.load_file(path)
    assert arrays.keys() == state.keys()
    for name, tensor in state.items():
        assert arrays[name].dtype == tensor.dtype and arrays[name].shape == tensor.shape, name
        np.testing.assert_array_equal(arrays[name], tensor.numpy())
    safetensors = pytest.importorskip("safetensors")
    with safetensors.safe_open(path, framework="numpy") as file:
        assert file.metadata() == {"format": "pt", "epoch": "4"}


def test_we_read_the_package_files(tmp_path, device):
    arrays = {"a": np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3), "b": np.arange(4, dtype=np.int64),
              "c": np.array([True, False, True]), "d": np.array(2.5), "e": np.arange(3, dtype=np.int32)}
    path = str(tmp_path / "theirs.safetensors")
    safetensors_numpy.save_file(arrays, path, metadata={"source": "numpy"})
    loaded = tg.load(path, device=device)
    assert serialization.load_metadata(path) == {"source": "numpy"}
    assert loaded.keys() == arrays.keys()
    for name, array in arrays.items():
        assert loaded[name].device == device and loaded[name].dtype == array.dtype, name
        np.testing.assert_array_equal(loaded[name].numpy(), array)


def test_torch_reads_our_files_and_we_read_torch_files(tmp_path, device):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    state = sample_state(device)
    tg.save(state, tmp_path / "ours.safetensors")
    tensors = safetensors_torch.load_file(str(tmp_path / "ours.safetensors"))
    for name, tensor in state.items():
        np.testing.assert_array_equal(tensors[name].numpy(), tensor.numpy())
        assert tensors[name].numpy().dtype == tensor.dtype, name
    theirs = {"h": torch.tensor([0.5, -3.0], dtype=torch.float16),
              "bf": torch.tensor([1.0, -2.5, 3e38], dtype=torch.bfloat16),
              "u8": torch.tensor([0, 255], dtype=torch.uint8), "i8": torch.tensor([-128], dtype=torch.int8)}
    safetensors_torch.save_file(theirs, str(tmp_path / "theirs.safetensors"))
    loaded = tg.load(tmp_path / "theirs.safetensors", device=device)
    for name, tensor in theirs.items():  # widened exactly to the tensor dtypes there are
        expected = tensor.float() if tensor.is_floating_point() else tensor.long()
        assert loaded[name].dtype == expected.numpy().dtype, name
        np.testing.assert_array_equal(loaded[name].numpy(), expected.numpy())


# ---- modules: PyTorch -> file -> tinygrad_gpu, and back ---------------------------------------
def module_pairs(torch, device):
    """(name, torch module, matching tg module, input as NumPy)."""
    rng = np.random.default_rng(0)
    images = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    return [
        ("linear", torch.nn.Linear(5, 3), tg.nn.Linear(5, 3, device=device),
         rng.standard_normal((4, 5)).astype(np.float32)),
        ("linear_no_bias", torch.nn.Linear(5, 3, bias=False), tg.nn.Linear(5, 3, bias=False, device=device),
         rng.standard_normal((4, 5)).astype(np.float32)),
        ("conv", torch.nn.Conv2d(4, 6, 3, stride=2, padding=1),
         tg.nn.Conv2d(4, 6, 3, stride=2, padding=1, device=device), images),
        ("conv_groups", torch.nn.Conv2d(4, 6, (3, 2), padding=(1, 0), groups=2, bias=False),
         tg.nn.Conv2d(4, 6, (3, 2), padding=(1, 0), groups=2, bias=False, device=device), images),
        ("batchnorm", torch.nn.BatchNorm2d(4), tg.nn.BatchNorm2d(4, device=device), images),
        ("layernorm", torch.nn.LayerNorm((7, 6)), tg.nn.LayerNorm((7, 6), device=device), images),
        ("embedding", torch.nn.Embedding(10, 3, padding_idx=2), tg.nn.Embedding(10, 3, padding_idx=2,
                                                                                 device=device),
         np.array([[1, 2, 9], [0, 2, 5]], np.int64)),
    ]


def run_torch(torch, module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def run_tg(module, x, device):
    data = tg.tensor(x, device=device)
    with tg.no_grad():
        return module(data).numpy()


def make_state_nontrivial_in_torch(torch, module, x):
    """Train-mode passes move BatchNorm's running statistics and count; other weights get noise."""
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.3)
        if isinstance(module, torch.nn.BatchNorm2d):
            module.train()
            for scale in (1.0, 2.0, 0.5):
                module(torch.from_numpy(x) * scale + 1.0)
    module.eval()


def make_state_nontrivial_in_tg(module, x, device):
    tg.manual_seed(1)
    for parameter in module.parameters():
        parameter.array[...] += tg.randn(*parameter.shape, device=device).array * 0.3
    if isinstance(module, tg.nn.BatchNorm2d):
        module.train()
        with tg.no_grad():
            for scale in (1.0, 2.0, 0.5):
                module(tg.tensor(x * scale + 1.0, device=device))
    module.eval()


@pytest.mark.parametrize("which", ["linear", "linear_no_bias", "conv", "conv_groups", "batchnorm",
                                   "layernorm", "embedding"])
def test_a_torch_state_dict_loads_into_the_matching_module(tmp_path, device, which):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, theirs, ours, x = next(pair for pair in module_pairs(torch, device) if pair[0] == which)
    make_state_nontrivial_in_torch(torch, theirs, x)
    path = str(tmp_path / f"{which}.safetensors")
    safetensors_torch.save_file(theirs.state_dict(), path)
    state = tg.load(path, device=device)
    assert sorted(state) == sorted(theirs.state_dict())
    assert ours.load_state_dict(state) == ([], [])  # strict: the same names, shapes and dtypes
    ours.eval()
    for name, value in theirs.state_dict().items():
        assert state[name].dtype == value.numpy().dtype, name
        np.testing.assert_array_equal(ours.state_dict()[name].numpy(), value.numpy())
    if which == "batchnorm":
        assert ours.num_batches_tracked.dtype == tg.int64 and ours.num_batches_tracked.item() == 3
    np.testing.assert_allclose(run_tg(ours, x, device), run_torch(torch, theirs, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("which", ["linear", "linear_no_bias", "conv", "conv_groups", "batchnorm",
                                   "layernorm", "embedding"])
def test_our_state_dict_loads_into_the_matching_torch_module(tmp_path, device, which):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    _, theirs, ours, x = next(pair for pair in module_pairs(torch, device) if pair[0] == which)
    make_state_nontrivial_in_tg(ours, x, device)
    path = str(tmp_path / f"{which}.safetensors")
    tg.save(ours.state_dict(), path)
    result = theirs.load_state_dict(safetensors_torch.load_file(path))  # strict
    assert not result.missing_keys and not result.unexpected_keys
    theirs.eval()
    if which == "batchnorm":
        assert theirs.num_batches_tracked.dtype == torch.int64 and int(theirs.num_batches_tracked) == 3
    np.testing.assert_allclose(run_torch(torch, theirs, x), run_tg(ours, x, device), rtol=1e-5, atol=1e-5)


def test_a_whole_torch_network_travels_both_ways(tmp_path, device):
    torch = pytest.importorskip("torch")
    safetensors_torch = pytest.importorskip("safetensors.torch")
    torch.manual_seed(0)
    theirs = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4),
                                 torch.nn.ReLU(), torch.nn.Conv2d(4, 4, 3, groups=4), torch.nn.ReLU())
    ours = tg.nn.Sequential(tg.nn.Conv2d(3, 4, 3, padding=1, device=device),
                            tg.nn.BatchNorm2d(4, device=device), tg.nn.ReLU(),
                            tg.nn.Conv2d(4, 4, 3, groups=4, device=device), tg.nn.ReLU())
    x = np.random.default_rng(1).standard_normal((2, 3, 6, 6)).astype(np.float32)
    theirs.train()
    with torch.no_grad():
        theirs(torch.from_numpy(x))
    theirs.eval()
    safetensors_torch.save_file(theirs.state_dict(), str(tmp_path / "net.safetensors"))
    ours.load_state_dict(tg.load(tmp_path / "net.safetensors", device=device))
    ours.eval()
    np.testing.assert_allclose(run_tg(ours, x, device), run_torch(torch, theirs, x), rtol=1e-5, atol=1e-5)
    # and back, through tg.save: torch gets exactly what it wrote
    tg.save(ours.state_dict(), tmp_path / "back.safetensors")
    back = safetensors_torch.load_file(str(tmp_path / "back.safetensors"))
    for name, value in theirs.state_dict().items():
        assert back[name].dtype == value.dtype and torch.equal(back[name], value), name


def test_load_state_dict_takes_torch_tensors_directly(device):
    torch = pytest.importorskip("torch")
    theirs, ours = torch.nn.BatchNorm2d(3), tg.nn.BatchNorm2d(3, device=device)
    with torch.no_grad():
        theirs.weight.mul_(2)
        theirs.num_batches_tracked += 5
    ours.load_state_dict(theirs.state_dict())
    assert ours.num_batches_tracked.item() == 5 and ours.weight.tolist() == [2.0, 2.0, 2.0]
    ours.load_state_dict(theirs.state_dict(keep_vars=True))  # parameters that require grad, too
    state = theirs.state_dict()
    state["num_batches_tracked"] = torch.tensor(5.0)
    with pytest.raises(ValueError, match="num_batches_tracked is float32 in the state but int64"):
        ours.load_state_dict(state)
    state["num_batches_tracked"] = torch.tensor(3.0, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="load_state_dict: num_batches_tracked"):
        ours.load_state_dict(state)
    assert ours.num_batches_tracked.item() == 5


def test_load_state_dict_takes_cuda_torch_tensors_without_a_host_copy():
    torch = pytest.importorskip("torch")
    if not (tg.cuda_available() and torch.cuda.is_available()):
        pytest.skip("needs CUDA in both PyTorch and CuPy")
    theirs = torch.nn.BatchNorm2d(3).cuda()
    with torch.no_grad():
        theirs.running_var.mul_(4)
        theirs.num_batches_tracked += 2
    ours = tg.nn.BatchNorm2d(3, device="cuda")
    ours.load_state_dict(theirs.state_dict())  # through DLPack, on the GPU
    assert ours.running_var.tolist() == [4.0, 4.0, 4.0] and ours.num_batches_tracked.item() == 2
    assert ours.num_batches_tracked.dtype == tg.int64 and ours.running_var.device == "cuda"
