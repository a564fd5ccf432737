"""Compile checks without hardware: every kernel form lowers for TPU (Mosaic) and CUDA
(Triton) from the CPU, chosen by the lowering platform, in forward and backward; the
backward of the scans is Pallas kernels only (no XLA loop recomputing the forward)."""

import dataclasses

import jax
import jax.numpy as jnp
import pytest

from kernels import _dispatch, _lowering
from kernels.decode_attention import decode_attention
from kernels.scan import selective_scan, ssd

F32, BF16 = jnp.float32, jnp.bfloat16
S = jax.ShapeDtypeStruct
PLATFORMS = ("tpu", "cuda")

SSD_FORWARD = ["ssd_chunk_state", "ssd_state_passing", "ssd_chunk_scan"]
SSD_BACKWARD = ["ssd_chunk_dstate", "ssd_state_passing_bwd", "ssd_chunk_scan_bwd"]


def _ssd_args(B, L, H, P, G, N, dtype):
    shapes = [(B, L, H, P), (B, L, H), (H,), (B, L, G, N), (B, L, G, N)]
    return [S(s, F32 if len(s) == 1 else dtype) for s in shapes]


def _selective_args(B, L, D, N, dtype):
    shapes = [(B, L, D), (B, L, D), (D, N), (B, L, N), (B, L, N)]
    return [S(s, F32 if len(s) == 2 else dtype) for s in shapes]


def _ssd_loss(x, dt, A, Bm, Cm, implementation="auto"):
    y, h = ssd(x, dt, A, Bm, Cm, chunk_size=64, implementation=implementation)
    return jnp.sum(y.astype(F32)) + jnp.sum(h)


def _selective_loss(x, dt, A, Bm, Cm):
    y, h = selective_scan(x, dt, A, Bm, Cm)
    return jnp.sum(y.astype(F32)) + jnp.sum(h)


def _names(text):
    return [c.name for c in _lowering.kernel_calls(text)]


def _grad(loss):
    return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4))


def test_one_function_lowers_per_platform():
    """One traced gradient lowers with Mosaic on tpu, Triton on cuda, no kernel on cpu."""
    args = _ssd_args(1, 64, 4, 16, 1, 16, F32)
    with _dispatch.lowering_for("tpu", "cuda"):
        traced = jax.jit(_grad(_ssd_loss)).trace(*args)
    targets = {}
    for platform in _lowering.PLATFORMS:
        with _lowering.fake_tpu_chip():
            text = traced.lower(lowering_platforms=(platform,)).as_text()
        targets[platform] = {c.target for c in _lowering.kernel_calls(text)}
    assert targets == {"tpu": {"tpu"}, "cuda": {"gpu"}, "cpu": set()}


def test_only_this_hosts_platforms_are_traced():
    """On a CPU-only host "auto" traces the XLA form alone (no kernel bodies to trace)."""
    if _dispatch.traced_platforms() != ("cpu",):
        pytest.skip("this host has an accelerator")
    jaxpr = jax.make_jaxpr(_grad(_ssd_loss))(*_ssd_args(1, 64, 4, 16, 1, 16, F32))
    assert "pallas_call" not in str(jaxpr) and "platform_index" not in str(jaxpr)


# Shape classes: N = 1 and P = 16 at an odd length; 3 and 8 heads per group at the models'
# P = 64, N = 128 (bfloat16, and float32).
SSD_SHAPES = {
    "P16-N1-L37": (1, 37, 4, 16, 1, 1, F32),
    "R3-bf16": (2, 200, 6, 64, 2, 128, BF16),
    "R8": (1, 128, 8, 64, 1, 128, F32),
}


@pytest.mark.parametrize("shape", list(SSD_SHAPES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_ssd_forward_and_backward_are_pallas(shape, platform):
    args = _ssd_args(*SSD_SHAPES[shape])
    assert _names(_lowering.lower(_ssd_loss, *args, platform=platform)) == SSD_FORWARD
    text = _lowering.lower(_grad(_ssd_loss), *args, platform=platform)
    assert _names(text) == SSD_FORWARD + SSD_BACKWARD
    assert "stablehlo.while" not in text  # no XLA scan recomputing the forward


SELECTIVE_SHAPES = {
    "N1-L37": (1, 37, 256, 1, F32),
    "D1536-N16-bf16": (2, 256, 1536, 16, BF16),
}


@pytest.mark.parametrize("shape", list(SELECTIVE_SHAPES))
@pytest.mark.parametrize("platform", PLATFORMS)
def test_selective_forward_and_backward_are_pallas(shape, platform):
    args = _selective_args(*SELECTIVE_SHAPES[shape])
    text = _lowering.lower(_grad(_selective_loss), *args, platform=platform)
    assert _names(text) == ["selective_scan_fwd", "selective_scan_bwd"]
    assert "stablehlo.while" not in text


@pytest.mark.parametrize("ratio", [1, 3, 8, 16])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_decode_attention_lowers(ratio, platform):
    """GQA ratios 1, 3, 8 (rows one by one on GPU) and 16 (a matmul); a bfloat16 cache."""
    K, E, Smax = 2, 64, 4096
    for dtype in (F32, BF16):
        args = [S((4, K * ratio, E), dtype), S((4, K, Smax, E), dtype), S((4, K, Smax, E), dtype)]
        args.append(S((4,), jnp.int32))
        text = _lowering.lower(decode_attention, *args, platform=platform)
        assert _names(text) == ["decode_attention"]


def test_pallas_that_cannot_run_raises_when_lowered_for_cpu():
    args = _ssd_args(1, 64, 4, 16, 1, 16, F32)
    with pytest.raises(ValueError, match="interpret=True"):
        _lowering.lower(_ssd_loss, *args, platform="cpu", implementation="pallas")


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
    with _lowering.fake_tpu_chip("TPU v5p"):
        assert tpu_info.get_tpu_info().generation == 5


@pytest.mark.parametrize("name", ["mamba2-130m", "mamba-130m", "gpt2"])
@pytest.mark.parametrize("platform", PLATFORMS)
def test_training_step_lowers_with_kernels(name, platform):
    """One training step (token NLL, forward and backward, remat) at L = 4096: the scans'
    forward and backward kernels for the SSMs; GPT-2 (no scan) lowers with no scan kernel."""
    from l2m_jax import models

    cfg = dataclasses.replace(models.preset(name), remat=True, max_positions=4096)
    params = jax.eval_shape(lambda: models.init(cfg, jax.random.key(0)))
    tokens = S((1, 4097), jnp.int32)

    def loss(params, tokens):
        logits = models.apply(cfg, params, tokens[:, :-1])
        logp = jax.nn.log_softmax(logits.astype(F32), axis=-1)
        return -jnp.mean(jnp.take_along_axis(logp, tokens[:, 1:, None], axis=-1))

    text = _lowering.lower(jax.value_and_grad(loss), params, tokens, platform=platform)
    names = set(_names(text))
    scan_kernels = {*SSD_FORWARD, *SSD_BACKWARD, "selective_scan_fwd", "selective_scan_bwd"}
    want = {
        "mamba2-130m": {*SSD_FORWARD, *SSD_BACKWARD},
        "mamba-130m": {"selective_scan_fwd", "selective_scan_bwd"},
        "gpt2": set(),
    }[name]
    assert names & scan_kernels == want
    assert "tensor<1x4096x" in text  # the step was lowered at L = 4096
