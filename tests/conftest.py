"""Shared fixtures: every test that takes `device` runs once per available device."""

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import tinygrad_gpu as tg

# CuPy compiles each kernel on first use, so no per-example deadline.
# The default profile is derandomized, so CI sees the same examples every run; "thorough"
# (HYPOTHESIS_PROFILE=thorough) draws new random examples and more of them.
settings.register_profile("default", deadline=None, max_examples=25, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.register_profile("thorough", deadline=None, max_examples=200,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not tg.cuda_available(), reason="CuPy with a CUDA GPU is not available"))]


@pytest.fixture(params=DEVICES)
def device(request):
    """The device name a test body runs on."""
    return request.param


@pytest.fixture(autouse=True)
def _seed():
    tg.manual_seed(0)
    yield
    # a device-side check a test triggered but never read back must not surface in the next test
    from tinygrad_gpu import device_checks

    device_checks.discard_pending()


def to_numpy(value):
    """A NumPy copy of a Tensor (or array)."""
    return value.numpy() if isinstance(value, tg.Tensor) else np.asarray(value)


def training_step(model, opt, loss_fn):
    """The ordinary training step of `model`, as a function of (inputs, targets): zero_grad, the loss
    of model(inputs), backward, an optimizer step; it returns the loss."""

    def step(inputs, targets):
        opt.zero_grad()
        loss = loss_fn(model(inputs), targets)
        loss.backward()
        opt.step()
        return loss

    return step
