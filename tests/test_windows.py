"""The sliding-window primitive under conv2d and pooling, against PyTorch's unfold and fold."""

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import tinygrad_gpu as tg
from tinygrad_gpu import windows

torch = pytest.importorskip("torch")
F = torch.nn.functional

pairs = st.tuples(st.integers(1, 3), st.integers(1, 3))


def _settings(draw_kernel, draw_stride, draw_padding, draw_dilation, h, w):
    kernel, stride, dilation = draw_kernel, draw_stride, draw_dilation
    padding = (min(draw_padding[0], kernel[0] // 2), min(draw_padding[1], kernel[1] // 2))
    oh = windows.output_size(h, kernel[0], stride[0], padding[0], dilation[0])
    ow = windows.output_size(w, kernel[1], stride[1], padding[1], dilation[1])
    return kernel, stride, padding, dilation, oh, ow


@given(kernel=pairs, stride=pairs, padding=st.tuples(st.integers(0, 1), st.integers(0, 1)),
       dilation=st.tuples(st.integers(1, 2), st.integers(1, 2)), n=st.integers(1, 2), c=st.integers(1, 3),
       h=st.integers(1, 7), w=st.integers(1, 7))
def test_unfold_and_its_gradient_match_torch(device, kernel, stride, padding, dilation, n, c, h, w):
    """Every window (overlapping, tiling, with gaps, padded, dilated) and the summed gradient (col2im)."""
    kernel, stride, padding, dilation, oh, ow = _settings(kernel, stride, padding, dilation, h, w)
    assume(oh >= 1 and ow >= 1)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, c, h, w))
    gy = rng.standard_normal((c, kernel[0], kernel[1], n, oh, ow))
    ours_x = tg.Tensor(x, device=device, requires_grad=True)
    columns = windows.Unfold.apply(ours_x, kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    columns.backward(tg.Tensor(gy, device=device))
    # ours (C, kh, kw, N, OH, OW) is torch's (N, C·kh·kw, OH·OW) with the batch axis moved
    as_torch = lambda a: torch.from_numpy(np.ascontiguousarray(
        a.reshape(c * kernel[0] * kernel[1], n, oh * ow).transpose(1, 0, 2)))
    expected = F.unfold(torch.from_numpy(x), kernel, dilation=dilation, padding=padding, stride=stride)
    np.testing.assert_array_equal(as_torch(columns.numpy()).numpy(), expected.numpy())
    folded = F.fold(as_torch(gy), (h, w), kernel, dilation=dilation, padding=padding, stride=stride)
    np.testing.assert_allclose(ours_x.grad.numpy(), folded.numpy(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("shape, kernel, stride, padding", [((2, 3, 4, 6), 2, 2, 0), ((1, 2, 6, 6), 3, 3, 0),
                                                            ((2, 1, 4, 4), 3, 3, 1), ((1, 2, 5, 5), 2, 2, 0)])
def test_windows_that_tile_the_input(device, shape, kernel, stride, padding):
    """Pooling's usual case (stride = kernel) and its edges: cropped padding, a ragged last row."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape).astype(np.float32)
    ours_x = tg.Tensor(x, device=device, requires_grad=True)
    columns = windows.Unfold.apply(ours_x, kernel=(kernel, kernel), stride=(stride, stride),
                                   padding=(padding, padding), dilation=(1, 1))
    gy = rng.standard_normal(columns.shape).astype(np.float32)
    columns.backward(tg.Tensor(gy, device=device))
    n, c, h, w = shape
    oh, ow = columns.shape[4:]
    flat = gy.reshape(c * kernel * kernel, n, oh * ow).transpose(1, 0, 2)
    folded = F.fold(torch.from_numpy(np.ascontiguousarray(flat)), (h, w), kernel, padding=padding,
                    stride=stride)
    np.testing.assert_array_equal(ours_x.grad.numpy(), folded.numpy())


def test_padding_with_a_fill_value(device):
    """Max pooling pads with -inf: the fill shows beyond the edges only."""
    x = np.arange(1.0, 10.0, dtype=np.float32).reshape(1, 1, 3, 3)
    columns = windows.Unfold.apply(tg.Tensor(x, device=device), kernel=(3, 3), stride=(3, 3), padding=(1, 1),
                                   dilation=(1, 1), fill=-np.inf).numpy()
    window = columns[:, :, :, 0, 0, 0].reshape(3, 3)  # the first window: the top-left corner
    np.testing.assert_array_equal(window, [[-np.inf, -np.inf, -np.inf], [-np.inf, 1, 2], [-np.inf, 4, 5]])


def test_max_pool_with_nan_and_ties_matches_torch(device):
    """A NaN is the maximum of its window and takes the gradient; a tie sends it to the first maximum."""
    x = np.array([[[[1.0, np.nan, 3.0, 3.0], [7.0, 0.0, 3.0, 2.0],
                    [5.0, 5.0, -1.0, -2.0], [5.0, 4.0, -3.0, -1.0]]]])
    ours_x = tg.Tensor(x, device=device, requires_grad=True)
    out = tg.nn.functional.max_pool2d(ours_x, 2)
    out.backward(tg.Tensor(np.arange(1.0, 5.0).reshape(1, 1, 2, 2), device=device))
    torch_x = torch.from_numpy(x).requires_grad_()
    expected = F.max_pool2d(torch_x, 2)
    expected.backward(torch.arange(1.0, 5.0, dtype=torch.float64).reshape(1, 1, 2, 2))
    np.testing.assert_array_equal(out.numpy(), expected.detach().numpy())
    np.testing.assert_array_equal(ours_x.grad.numpy(), torch_x.grad.numpy())


def test_max_pool_in_eval_needs_no_window_positions(device, monkeypatch):
    """Without a gradient the positions of the maxima are never computed (inference stays cheap)."""
    x = tg.Tensor(np.random.default_rng(2).standard_normal((2, 3, 4, 4)), device=device)

    def no_argmax(*args, **kwargs):
        raise AssertionError("argmax called for a pool that needs no gradient")

    monkeypatch.setattr(tg.backend.array_module(device), "argmax", no_argmax)
    with tg.no_grad():
        out = tg.nn.functional.max_pool2d(x, 2)
    np.testing.assert_array_equal(out.numpy(), x.numpy().reshape(2, 3, 2, 2, 2, 2).max(axis=(3, 5)))
    assert out._ctx is None
