"""Compile checks without hardware: the kernels lower for TPU (Mosaic) and CUDA (Triton) from
the CPU, chosen by the lowering platform, in forward and backward."""

import jax
import jax.numpy as jnp
import pytest

from kernels import _lowering
from kernels.scan import ssd

F32 = jnp.float32


def _ssd_args(B=1, L=64, H=4, P=16, G=1, N=16, dtype=F32):
    shapes = [(B, L, H, P), (B, L, H), (H,), (B, L, G, N), (B, L, G, N)]
    return [jax.ShapeDtypeStruct(s, F32 if len(s) == 1 else dtype) for s in shapes]


def _ssd_loss(x, dt, A, Bm, Cm, implementation="auto"):
    y, h = ssd(x, dt, A, Bm, Cm, chunk_size=16, implementation=implementation)
    return jnp.sum(y.astype(F32)) + jnp.sum(h)


def test_one_function_lowers_per_platform():
    """The same traced gradient lowers with Mosaic on tpu, Triton on cuda, no kernel on cpu."""
    grad = jax.value_and_grad(_ssd_loss, argnums=(0, 1, 2, 3, 4))
    targets = {}
    for platform in _lowering.PLATFORMS:
        calls = _lowering.kernel_calls(_lowering.lower(grad, *_ssd_args(), platform=platform))
        targets[platform] = {c.target for c in calls}
        assert all(c.name for c in calls), calls
    assert targets == {"tpu": {"tpu"}, "cuda": {"gpu"}, "cpu": set()}


def test_pallas_that_cannot_run_raises_when_lowered_for_cpu():
    with pytest.raises(ValueError, match="interpret=True"):
        _lowering.lower(_ssd_loss, *_ssd_args(), platform="cpu", implementation="pallas")


def test_fake_tpu_chip_is_undone():
    from jax._src.pallas.mosaic import tpu_info

    kind = jax.devices()[0].device_kind
    before = dict(tpu_info.registry)
    with _lowering.fake_tpu_chip("TPU v5e"):
        assert tpu_info.get_tpu_info().chip_version == tpu_info.ChipVersion.TPU_V5E
    assert tpu_info.registry == before
    with pytest.raises(ValueError, match=kind):
        tpu_info.get_tpu_info()
    with pytest.raises(ValueError, match="TPU v99"), _lowering.fake_tpu_chip("TPU v99"):
        pass
