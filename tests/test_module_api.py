"""Module's PyTorch vocabulary: modes, the module tree, buffers, hooks, containers, strict loading."""

import numpy as np
import pytest

import tinygrad_gpu as tg
from tests.conftest import to_numpy


class Block(tg.nn.Module):
    def __init__(self, device="cpu"):
        self.conv = tg.nn.Conv2d(1, 2, 3, device=device)
        self.norm = tg.nn.BatchNorm2d(2, device=device)
        self.heads = tg.nn.ModuleList([tg.nn.Linear(2, 1, device=device), tg.nn.Linear(2, 3, device=device)])
        self.extra = tg.nn.ModuleDict({"drop": tg.nn.Dropout(0.5)})
        self.register_buffer("steps", tg.Tensor([0.0], device=device))
        self.register_buffer("scratch", tg.Tensor([1.0], device=device), persistent=False)

    def forward(self, x):
        return self.norm(self.conv(x))


def test_module_tree_names_and_modes():
    block = Block()
    names = [name for name, _ in block.named_modules()]
    assert names == ["", "conv", "norm", "heads", "heads.0", "heads.1", "extra", "extra.drop"]
    assert [type(m).__name__ for m in block.children()] == [
        "Conv2d",
        "BatchNorm2d",
        "ModuleList",
        "ModuleDict",
    ]
    assert all(m.training for m in block.modules())
    assert block.eval() is block and not any(m.training for m in block.modules())
    block.train()
    assert block.extra["drop"].training
    seen = []
    block.apply(lambda m: seen.append(type(m).__name__))
    assert seen[-1] == "Block" and seen[0] == "Conv2d"


def test_buffers_in_state_dict_and_moved(device):
    block = Block(device)
    state = block.state_dict()
    assert "steps" in state and "scratch" not in state
    assert {"norm.running_mean", "norm.running_var", "norm.num_batches_tracked"} <= set(state)
    assert [n for n, _ in block.named_buffers()][:2] == ["steps", "scratch"]
    assert "heads.1.weight" in state and "heads.1.weight" in dict(block.named_parameters())
    moved = block.to("cpu")
    assert all(b.device == "cpu" for b in moved.buffers())


def test_load_state_dict_strict_and_not():
    source, target = Block(), Block()
    state = source.state_dict()
    state.pop("heads.0.bias")
    state["unknown"] = tg.Tensor([1.0])
    with pytest.raises(
        ValueError, match="missing keys \\['heads.0.bias'\\], unexpected keys \\['unknown'\\]"
    ):
        target.load_state_dict(state)
    result = target.load_state_dict(state, strict=False)
    assert result.missing_keys == ["heads.0.bias"] and result.unexpected_keys == ["unknown"]
    np.testing.assert_array_equal(target.conv.weight.numpy(), source.conv.weight.numpy())


def test_plain_list_of_modules_is_refused_with_a_pointer():
    class Bad(tg.nn.Module):
        def __init__(self):
            self.layers = [tg.nn.Linear(2, 2)]

    with pytest.raises(TypeError, match="ModuleList"):
        Bad()
    with pytest.raises(TypeError, match="ModuleDict"):
        tg.nn.Module().__setattr__("parts", {"a": tg.nn.ReLU()})


def test_forward_hooks_see_and_replace(device):
    layer = tg.nn.Linear(2, 2, device=device)
    calls = []
    pre = layer.register_forward_pre_hook(lambda m, args: calls.append("pre") or (args[0] * 2,))
    post = layer.register_forward_hook(lambda m, args, out: calls.append("post") or out * 0)
    x = tg.Tensor([[1.0, 2.0]], device=device)
    assert to_numpy(layer(x)).tolist() == [[0.0, 0.0]] and calls == ["pre", "post"]
    pre.remove()
    post.remove()
    np.testing.assert_allclose(to_numpy(layer(x)), to_numpy(x @ layer.weight.T + layer.bias), rtol=1e-6)


def test_hooked_activation_in_sequential_runs_on_its_own(device):
    model = tg.nn.Sequential(tg.nn.Linear(2, 3, device=device), tg.nn.ReLU())
    outputs = []
    model[1].register_forward_hook(lambda m, args, out: outputs.append(out))
    y = model(tg.Tensor([[1.0, -1.0]], device=device))
    assert len(outputs) == 1 and outputs[0] is y


def test_requires_grad_freezes_every_parameter():
    block = Block()
    block.conv.requires_grad_(False)
    assert not block.conv.weight.requires_grad and block.norm.weight.requires_grad
    with pytest.raises(TypeError, match="bool"):
        block.requires_grad_("yes")


def test_module_list_and_dict_behave_like_containers():
    items = tg.nn.ModuleList([tg.nn.ReLU()])
    items.append(tg.nn.Tanh()).extend([tg.nn.Sigmoid()])
    items.insert(0, tg.nn.SiLU())
    assert [type(m).__name__ for m in items] == ["SiLU", "ReLU", "Tanh", "Sigmoid"]
    assert len(items[1:]) == 3 and isinstance(items[1:], tg.nn.ModuleList)
    with pytest.raises(TypeError, match="modules"):
        items.append(3)
    parts = tg.nn.ModuleDict([("a", tg.nn.ReLU())])
    parts["b"] = tg.nn.Tanh()
    assert list(parts) == ["a", "b"] and "b" in parts and len(parts) == 2


def test_keyword_arguments_reach_forward_with_and_without_hooks():
    class Shift(tg.nn.Module):
        def forward(self, x, shift=0.0):
            return x + shift

    module = Shift()
    x = tg.Tensor([1.0, 2.0], device="cpu")
    assert module(x, shift=1.0).tolist() == [2.0, 3.0]
    seen = []
    module.register_forward_hook(lambda m, args, out: seen.append(len(args)))
    assert module(x, shift=2.0).tolist() == [3.0, 4.0] and seen == [1]
