"""gradcheck itself: it passes correct gradients and catches wrong ones, naming the element."""

import numpy as np
import pytest
from planted import WrongSquare

import tinygrad_gpu as tg
from tinygrad_gpu import ops


def test_gradcheck_passes_a_correct_gradient(device):
    x = tg.Tensor([[0.3, -1.2], [2.0, 0.7]], device=device, requires_grad=True)
    assert tg.gradcheck(lambda t: (t.exp() * t).sum(axis=0), [x])


def test_gradcheck_names_input_element_and_values(device):
    x = tg.Tensor([1.5, -0.5], device=device, requires_grad=True)
    with pytest.raises(tg.GradcheckError, match=r"input 0 \(shape \(2,\)\), element \(0,\): analytic"):
        tg.gradcheck(lambda t: WrongSquare.apply(t).sum(), [x])


def test_gradcheck_needs_an_input_that_requires_grad(device):
    with pytest.raises(ValueError, match="requires_grad"):
        tg.gradcheck(lambda t: t * 2, [tg.Tensor([1.0], device=device)])


def test_gradcheck_runs_in_float64_and_leaves_inputs_alone(device):
    x = tg.Tensor(np.array([0.25, 0.5], np.float32), device=device, requires_grad=True)
    assert tg.gradcheck(lambda t: ops.Sigmoid.apply(t), [x], atol=1e-8, rtol=1e-6)
    assert x.dtype == np.float32 and x.grad is None
