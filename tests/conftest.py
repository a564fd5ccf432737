"""Strict JAX for every test: 8 simulated CPU devices, no implicit rank promotion."""

import os

# Must happen before JAX initialises its backends.
_flags = os.environ.get("XLA_FLAGS", "")
if "xla_force_host_platform_device_count" not in _flags:
    os.environ["XLA_FLAGS"] = f"{_flags} --xla_force_host_platform_device_count=8".strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")
jax.config.update("jax_numpy_dtype_promotion", "standard")


@pytest.fixture
def x64():
    """Runs the test body with float64 enabled in JAX (for the information estimators)."""
    with jax.enable_x64(True):
        yield
