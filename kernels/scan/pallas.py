"""Pallas kernels for the SSM scans, forward and backward, for TPU (Mosaic) and GPU (Triton).

Every kernel body is written once; `target` ("tpu" | "gpu") picks the grid, the block layouts
and a few primitives (TPU: static loops, lane-dense tiles, vectors as (1, T) rows; GPU: loops
inside the program, 1-D vectors, power-of-two blocks of at least 16 for Triton's `dot`).

SSD (Mamba-2), chunk-parallel (the structure of mamba_ssm's chunk_state / state_passing /
chunk_scan), chunks of T positions, heads h with A_h scalar, cum = in-chunk cumsum of dt·A
(computed outside the kernels, in the [B, nc, H, T] layout next to dt):
  forward   ssd_chunk_state    S_c = Σ_s exp(cum_T − cum_s) dt_s x_s ⊗ B_s          (P×N per chunk)
            ssd_state_passing  h_c = exp(cum_T,c−1) h_c−1 + S_c−1: the chunk start states
            ssd_chunk_scan     y = ((C·Bᵀ) ∘ decay)(dt·x) + exp(cum) ∘ (C h_cᵀ)
  backward  ssd_chunk_dstate   D_c = Σ_t exp(cum_t) dy_t ⊗ C_t
            ssd_state_passing  (reverse) g_c = dL/dh at the end of chunk c, and dL/dh0
            ssd_chunk_scan_bwd dx, dt (direct part), d cum, dB, dC from h_c and g_c
The forward saves only the chunk start states (O(B·L/T·H·P·N)); the backward recomputes
inside each chunk. C·Bᵀ is computed once per group in each program (its heads share it). The
chunk kernels run a grid (batch, chunk, head block), all parallel, so the GPU gets B·nc·H/hb
programs; the state passing is sequential over chunks (an "arbitrary" grid axis with the state
in VMEM on TPU, a loop inside the program on GPU) and parallel over batch, heads and state.

Selective scan (Mamba-1): a time loop vectorised over a block of channels, the state an
(N, channels) tile on chip. The forward saves the state every K = `blocks.sub` positions
(O(B·L/K·D·N)); the backward runs over those sub-chunks in reverse, recomputes the K states of
a sub-chunk (unrolled, kept in registers/vregs) and steps back through them. TPU: grid (batch,
channel blocks, chunks) with the chunk axis sequential and the state in VMEM scratch, K-row
tiles loaded at once; GPU: grid (batch, channel blocks) with the loop over the whole length
inside the program (Triton programs cannot pass state between grid steps).

Precision: for bfloat16 inputs the matmul operands are bfloat16 with float32 accumulation at
default precision; for float32 inputs the dots run at HIGHEST precision (float32 FMA on GPU,
the multi-pass bf16 MXU algorithm on TPU: relative error ~1e-6 instead of ~1e-3 for TF32 or
one-pass bf16; several times slower on the matrix units). Elementwise work (decays, states,
accumulators) is float32 throughout. Two exceptions keep the backward's d(dt·A) accurate where
its terms cancel: a dot with a float32 chunk state or state cotangent takes that operand as two
bfloat16 parts (`_dot_state`; those dots are T·P·N, not T·T·P), and the diagonal t = s, which
enters d cum twice with opposite signs, is left out of both sums. bfloat16 dA moved 3.7e-2 →
5e-3 of its largest entry (sequential oracle's own bf16 error 7e-3); float32 dA 1.3e-5 → 5e-6.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from kernels import _dispatch

__all__ = [
    "SSDBlocks",
    "SelectiveBlocks",
    "selective_scan_bwd",
    "selective_scan_fwd",
    "ssd_bwd",
    "ssd_fwd",
]

_F32 = jnp.float32
_GPU_MIN_DOT = 16  # Triton's dot needs every dimension >= 16
_GPU_PROGRAMS = 264  # about two programs per SM on an H100/H200 (132 SMs)


# ----------------------------------------------------------------------------- block configs


@dataclasses.dataclass(frozen=True)
class SSDBlocks:
    """Block sizes of the SSD kernels.

    Attributes:
      chunk: positions per chunk T (GPU: a power of two >= 16; TPU: a multiple of 8, or the
        whole padded length).
      heads: heads per program of the chunk kernels; divides H // G (the heads of one group,
        which share C·Bᵀ) or is a multiple of it. TPU: a multiple of 8 or all H heads.
      state_heads: heads per program of the TPU state passing (a multiple of 8 or H).
      state_block: state elements per program of the GPU state passing (a power of two).
      num_warps, num_stages: Triton launch parameters (GPU).
    """

    chunk: int
    heads: int
    state_heads: int = 1
    state_block: int = 1024
    num_warps: int = 4
    num_stages: int = 2

    @classmethod
    def default(cls, B, L, H, P, G, N, chunk_size, target) -> SSDBlocks:
        """Defaults from the shapes and the target: the caller's chunk where the target takes
        it; enough programs for the GPU; (8, 128)-tileable blocks for the TPU."""
        R = H // G
        if target == "gpu":
            T = max(_GPU_MIN_DOT, _dispatch.next_pow2(chunk_size))
            nc = -(-L // T)
            heads = next((d for d in _divisors_desc(R) if B * nc * (H // d) >= _GPU_PROGRAMS), 1)
            Pp, Np = (max(_GPU_MIN_DOT, _dispatch.next_pow2(n)) for n in (P, N))
            # The backward keeps dB, dC (T×N) and g, h (P×N) live: more warps, fewer spills.
            warps = 8 if T >= 128 or Pp * Np >= 64 * 128 else 4
            return cls(T, heads, 1, min(1024, Pp * Np), warps, 2)
        T = chunk_size if chunk_size % 8 == 0 else 8 * -(-chunk_size // 8)
        if T >= L:
            T = L  # one chunk: the block is the whole (unpadded) length
        heads = next((d for d in (8, 16, 24, 32) if R % d == 0), H)
        state_heads = 8 if H % 8 == 0 else H
        return cls(T, heads, state_heads, 0, 4, 2)

    def check(self, L, H, G, target):
        R = H // G
        if not (R % self.heads == 0 or (self.heads % R == 0 and H % self.heads == 0)):
            raise ValueError(
                f"SSDBlocks.heads={self.heads} must divide the {R} heads of a group or be a "
                f"multiple of them dividing H={H}"
            )
        if target == "gpu" and (self.chunk < 16 or self.chunk & (self.chunk - 1)):
            raise ValueError(f"SSDBlocks.chunk={self.chunk}: the GPU needs a power of two >= 16")
        if target == "tpu":
            if self.chunk % 8 and self.chunk != L:
                raise ValueError(
                    f"SSDBlocks.chunk={self.chunk}: the TPU needs a multiple of 8 or the length"
                )
            for name, n in (("heads", self.heads), ("state_heads", self.state_heads)):
                if n % 8 and n != H:
                    raise ValueError(f"SSDBlocks.{name}={n}: the TPU needs a multiple of 8 or H")
            if H % self.state_heads:
                raise ValueError(f"SSDBlocks.state_heads={self.state_heads} must divide H={H}")


@dataclasses.dataclass(frozen=True)
class SelectiveBlocks:
    """Block sizes of the selective-scan kernels.

    Attributes:
      channels: channels per program (GPU: a power of two; TPU: a multiple of 128 or D).
      sub: positions between saved states K (the backward recomputes K states at a time).
      chunk: positions per TPU grid step (a multiple of `sub`).
      num_warps, num_stages: Triton launch parameters (GPU).
    """

    channels: int
    sub: int = 8
    chunk: int = 128
    num_warps: int = 1
    num_stages: int = 1

    @classmethod
    def default(cls, B, L, D, N, target, dtype=jnp.float32) -> SelectiveBlocks:
        if target == "gpu":
            # One warp per 32 channels (a thread per channel, N states each); fewer channels
            # per program when the batch is small, so the GPU has enough programs.
            bd = 32 if B * -(-D // 32) >= _GPU_PROGRAMS // 2 else 16
            return cls(min(bd, _dispatch.next_pow2(D)), 8, 8, 1, 1)
        bd = next((c for c in (256, 128) if D % c == 0), D)
        K = 16 if jnp.dtype(dtype).itemsize == 2 else 8  # one packed (K, 128) tile per load
        chunk = min(128, K * -(-L // K))
        return cls(bd, K, chunk, 1, 1)

    def check(self, D, target):
        if self.chunk % self.sub:
            raise ValueError(f"SelectiveBlocks.chunk={self.chunk} must be a multiple of sub")
        if target == "gpu" and self.channels & (self.channels - 1):
            raise ValueError(f"SelectiveBlocks.channels={self.channels}: GPU needs a power of 2")
        if target == "tpu" and self.channels % 128 and self.channels != D:
            raise ValueError(
                f"SelectiveBlocks.channels={self.channels}: the TPU needs a multiple of 128 or D"
            )


def _divisors_desc(n):
    return [d for d in range(n, 0, -1) if n % d == 0]


# ----------------------------------------------------------------------------- helpers


def _cdiv(a, b):
    return -(-a // b)


def _pad_to(a, axis, size):
    if a.shape[axis] == size:
        return a
    widths = [(0, 0)] * a.ndim
    widths[axis] = (0, size - a.shape[axis])
    return jnp.pad(a, widths)


def _dot(a, b, contract, dtype):
    """a·b contracting dims `contract` = (dim of a, dim of b), operands in `dtype`, f32 out."""
    precision = lax.Precision.HIGHEST if dtype == _F32 else lax.Precision.DEFAULT
    dims = (((contract[0],), (contract[1],)), ((), ()))
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), dims, precision=precision, preferred_element_type=_F32
    )


def _dot_state(a, s, contract, dtype):
    """a·s where s is a float32 state (or state cotangent) and a is exact in `dtype`. With
    bfloat16 operands, s goes in as two bfloat16 parts (s = hi + lo), so the dot keeps about
    16 bits of s instead of 8 at twice a single bf16 dot's cost: rounding the carried states to
    bfloat16 is what made dA lose ~3% (relative to its largest entry) where its terms cancel."""
    if dtype == _F32:
        return _dot(a, s, contract, dtype)
    hi = s.astype(dtype)
    lo = (s - hi.astype(_F32)).astype(dtype)
    return _dot(a, hi, contract, dtype) + _dot(a, lo, contract, dtype)


class _Vec:
    """Vectors over positions (or states) inside a kernel: (1, n) rows, with the few layout
    operations the kernels need. TPU: no transposes — a column comes from a row by a masked
    lane reduction, row sums by a ones-matmul. GPU: reshapes."""

    def __init__(self, target):
        self.tpu = target == "tpu"

    def load(self, ref, j):
        """Row j of a [rows, n] ref as (1, n)."""
        if self.tpu:
            return ref[pl.ds(j, 1), :]
        return ref[j][None, :]

    def store(self, ref, j, row_1xn):
        if self.tpu:
            ref[pl.ds(j, 1), :] = row_1xn
        else:
            ref[j] = row_1xn.reshape(row_1xn.shape[1])

    def col(self, row_1xn):
        n = row_1xn.shape[1]
        if not self.tpu:
            return row_1xn.reshape(n, 1)
        eye = lax.broadcasted_iota(jnp.int32, (n, n), 0) == lax.broadcasted_iota(
            jnp.int32, (n, n), 1
        )
        return jnp.sum(jnp.where(eye, row_1xn, 0.0), axis=1, keepdims=True)

    def row(self, col_nx1):
        n = col_nx1.shape[0]
        if not self.tpu:
            return col_nx1.reshape(1, n)
        eye = lax.broadcasted_iota(jnp.int32, (n, n), 0) == lax.broadcasted_iota(
            jnp.int32, (n, n), 1
        )
        return jnp.sum(jnp.where(eye, col_nx1, 0.0), axis=0, keepdims=True)

    def rowsum(self, a_nxk):
        """Σ_k a[i, k] as a (1, n) row."""
        if not self.tpu:
            return jnp.sum(a_nxk, axis=1)[None, :]
        ones = jnp.ones((1, a_nxk.shape[1]), _F32)
        return _dot(ones, a_nxk, (1, 1), _F32)


def _loop(target, n, body, carry):
    """for i in range(n): carry = body(i, carry) — unrolled on TPU (static indices for lane
    slices), a loop on GPU."""
    if target == "tpu":
        for i in range(n):
            carry = body(i, carry)
        return carry
    if n == 1:
        return body(0, carry)
    return lax.fori_loop(0, n, body, carry)


def _compiler_params(target, semantics, blocks):
    return _dispatch.compiler_params(
        target, semantics, num_warps=blocks.num_warps, num_stages=blocks.num_stages
    )


def _tpu_vmem(shape):
    from jax.experimental.pallas import tpu as pltpu

    return pltpu.VMEM(shape, _F32)


# ----------------------------------------------------------------------------- SSD layouts


class _SSDLayout:
    """Shapes of one SSD call in the kernels' layouts (padded where the target needs it)."""

    def __init__(self, x, B_, blocks, target):
        self.B, self.L, self.H, self.P = x.shape
        self.G, self.N = B_.shape[2:]
        self.R = self.H // self.G
        self.T = blocks.chunk
        self.nc = _cdiv(self.L, self.T)
        self.Lp = self.nc * self.T
        if target == "gpu":
            self.Pp, self.Np = (max(_GPU_MIN_DOT, _dispatch.next_pow2(n)) for n in (self.P, self.N))
        else:
            self.Pp, self.Np = self.P, self.N
        self.hb = blocks.heads
        self.gb = max(1, self.hb // self.R)  # groups per program
        self.hpg = min(self.hb, self.R)  # heads per group in a program
        self.nblk = self.H // self.hb
        self.n_part = self.nblk * self.gb  # dB/dC partial sums
        self.cd = jnp.bfloat16 if x.dtype == jnp.bfloat16 else _F32  # matmul operand dtype

    def seq(self, a_BxLxHxP):
        """[B, L, H, P] -> [B, Lp, H·Pp] (the models' layout; a reshape unless padded)."""
        a = _pad_to(_pad_to(a_BxLxHxP, 1, self.Lp), 3, self.Pp)
        return a.reshape(self.B, self.Lp, self.H * self.Pp)

    def unseq(self, a):
        return a.reshape(self.B, self.Lp, self.H, self.Pp)[:, : self.L, :, : self.P]

    def bc(self, a_BxLxGxN):
        """[B, L, G, N] -> [B, G, Lp, Np] (a reshape when G == 1)."""
        a = _pad_to(_pad_to(a_BxLxGxN, 1, self.Lp), 3, self.Np)
        return jnp.transpose(a, (0, 2, 1, 3))

    def unbc(self, a_BxGxLpxNp):
        return jnp.transpose(a_BxGxLpxNp, (0, 2, 1, 3))[:, : self.L, :, : self.N]

    def vec(self, a_BxLxH):
        """[B, L, H] float32 -> [B, nc, H, T] (zeros past L)."""
        a = _pad_to(a_BxLxH.astype(_F32), 1, self.Lp).reshape(self.B, self.nc, self.T, self.H)
        return jnp.swapaxes(a, 2, 3)

    def unvec(self, a_BxCxHxT):
        return jnp.swapaxes(a_BxCxHxT, 2, 3).reshape(self.B, self.Lp, self.H)[:, : self.L]

    def state(self, h_BxHxPxN):
        return _pad_to(_pad_to(h_BxHxPxN.astype(_F32), 2, self.Pp), 3, self.Np)

    # BlockSpecs of the chunk kernels: grid (b, c, i) over batch, chunks, head blocks.
    def seq_spec(self):
        return pl.BlockSpec((None, self.T, self.hb * self.Pp), lambda b, c, i: (b, c, i))

    def vec_spec(self):
        return pl.BlockSpec((None, None, self.hb, self.T), lambda b, c, i: (b, c, i, 0))

    def bc_spec(self):
        gb, hb, R = self.gb, self.hb, self.R
        return pl.BlockSpec(
            (None, gb, self.T, self.Np), lambda b, c, i: (b, (i * hb // R) // gb, c, 0)
        )

    def part_spec(self):
        return pl.BlockSpec((None, self.gb, self.T, self.Np), lambda b, c, i: (b, i, c, 0))

    def states_spec(self):
        return pl.BlockSpec(
            (None, None, self.hb, self.Pp, self.Np), lambda b, c, i: (b, c, i, 0, 0)
        )


def _ssd_decays(vec, cum_1xT):
    """exp(cum_t − cum_s) for t ≥ s as [t, s] and as [s, t], from the row of cum."""
    T = cum_1xT.shape[1]
    cum_Tx1 = vec.col(cum_1xT)
    i0 = lax.broadcasted_iota(jnp.int32, (T, T), 0)
    i1 = lax.broadcasted_iota(jnp.int32, (T, T), 1)
    decay_ts = jnp.exp(jnp.where(i0 >= i1, cum_Tx1 - cum_1xT, -jnp.inf))
    decay_st = jnp.exp(jnp.where(i1 >= i0, cum_1xT - cum_Tx1, -jnp.inf))
    return cum_Tx1, decay_ts, decay_st


def _head_slice(j, P):
    return pl.ds(pl.multiple_of(j * P, P), P) if not isinstance(j, int) else pl.ds(j * P, P)


def _last(row_1xT):
    T = row_1xT.shape[1]
    return jnp.sum(jnp.where(lax.broadcasted_iota(jnp.int32, (1, T), 1) == T - 1, row_1xT, 0.0))


# ----------------------------------------------------------------------------- SSD kernels


def _chunk_outer_kernel(a_ref, dt_ref, cum_ref, b_ref, out_ref, *, lay, target, mode):
    """out[j] = Σ_t w_t a_t ⊗ b_t per head j; w = dt·exp(cum_T − cum) ("state") or exp(cum)
    ("dstate"). a [T, hb·P], dt/cum [hb, T], b [gb, T, N], out [hb, P, N]."""
    vec = _Vec(target)
    P = lay.Pp

    def head(j, carry):
        cum = vec.load(cum_ref, j)
        # forward: dt_t·exp(cum_T − cum_t) (to the chunk end); backward: exp(cum_t)
        w = vec.load(dt_ref, j) * jnp.exp(_last(cum) - cum) if mode == "state" else jnp.exp(cum)
        a = a_ref[:, _head_slice(j, P)].astype(_F32) * vec.col(w)
        b = b_ref[j // lay.R if lay.gb > 1 else 0]
        out_ref[j] = _dot(a, b, (0, 0), lay.cd)
        return carry

    _loop(target, lay.hb, head, 0)


def _chunk_outer(a2, dt4, cum4, bc4, lay, blocks, target, interpret, mode, name):
    return pl.pallas_call(
        functools.partial(_chunk_outer_kernel, lay=lay, target=target, mode=mode),
        out_shape=jax.ShapeDtypeStruct((lay.B, lay.nc, lay.H, lay.Pp, lay.Np), _F32),
        grid=(lay.B, lay.nc, lay.nblk),
        in_specs=[lay.seq_spec(), lay.vec_spec(), lay.vec_spec(), lay.bc_spec()],
        out_specs=lay.states_spec(),
        compiler_params=_compiler_params(target, ("parallel",) * 3, blocks),
        interpret=interpret,
        name=name,
    )(a2, dt4, cum4, bc4)


def _state_pass_kernel(
    s_ref, dec_ref, h0_ref, starts_ref, final_ref, *scratch, target, nc, reverse
):
    """carry = dec_c·carry + s_c over the chunks (in reverse if `reverse`); emits the carry
    before each chunk. TPU: the chunk order is the grid's (its index map reverses)."""
    if target == "tpu":
        (state_ref,) = scratch
        c = pl.program_id(2)

        @pl.when(c == 0)
        def _():
            state_ref[...] = h0_ref[...]

        starts_ref[...] = state_ref[...]
        state_ref[...] = dec_ref[...][:, :, None] * state_ref[...] + s_ref[...]

        @pl.when(c == nc - 1)
        def _():
            final_ref[...] = state_ref[...]

    else:

        def step(k, h):
            c = nc - 1 - k if reverse else k
            starts_ref[c] = h
            return dec_ref[c] * h + s_ref[c]

        final_ref[...] = lax.fori_loop(0, nc, step, h0_ref[...])


def _state_passing(s5, dec4, h0_4, lay, blocks, target, interpret, reverse, name):
    """Chunk start states (forward) or chunk end cotangents (reverse) and the final carry.

    s5 [B, nc, H, Pp, Np]; dec4 [B, nc, H, 1] = exp(cum_T) per chunk; h0_4 [B, H, Pp, Np].
    """
    B, nc, H, Pp, Np = s5.shape
    out_shape = [
        jax.ShapeDtypeStruct(s5.shape, _F32),
        jax.ShapeDtypeStruct(h0_4.shape, _F32),
    ]
    if target == "tpu":
        hs = blocks.state_heads
        cidx = (lambda c: nc - 1 - c) if reverse else (lambda c: c)
        big = pl.BlockSpec((None, None, hs, Pp, Np), lambda b, i, c: (b, cidx(c), i, 0, 0))
        return pl.pallas_call(
            functools.partial(_state_pass_kernel, target=target, nc=nc, reverse=reverse),
            out_shape=out_shape,
            grid=(B, H // hs, nc),
            in_specs=[
                big,
                pl.BlockSpec((None, None, hs, 1), lambda b, i, c: (b, cidx(c), i, 0)),
                pl.BlockSpec((None, hs, Pp, Np), lambda b, i, c: (b, i, 0, 0)),
            ],
            out_specs=[big, pl.BlockSpec((None, hs, Pp, Np), lambda b, i, c: (b, i, 0, 0))],
            scratch_shapes=[_tpu_vmem((hs, Pp, Np))],
            compiler_params=_compiler_params(target, ("parallel", "parallel", "arbitrary"), blocks),
            interpret=interpret,
            name=name,
        )(s5, dec4, h0_4)
    # GPU: flat state blocks, the chunk loop inside the program.
    S = Pp * Np
    blk = min(blocks.state_block, S)
    starts, final = pl.pallas_call(
        functools.partial(_state_pass_kernel, target=target, nc=nc, reverse=reverse),
        out_shape=[
            jax.ShapeDtypeStruct((B, nc, H, S), _F32),
            jax.ShapeDtypeStruct((B, H, S), _F32),
        ],
        grid=(B, H, S // blk),
        in_specs=[
            pl.BlockSpec((None, nc, None, blk), lambda b, h, k: (b, 0, h, k)),
            pl.BlockSpec((None, nc, None, 1), lambda b, h, k: (b, 0, h, 0)),
            pl.BlockSpec((None, None, blk), lambda b, h, k: (b, h, k)),
        ],
        out_specs=[
            pl.BlockSpec((None, nc, None, blk), lambda b, h, k: (b, 0, h, k)),
            pl.BlockSpec((None, None, blk), lambda b, h, k: (b, h, k)),
        ],
        compiler_params=_compiler_params(target, ("parallel",) * 3, blocks),
        interpret=interpret,
        name=name,
    )(s5.reshape(B, nc, H, S), dec4, h0_4.reshape(B, H, S))
    return starts.reshape(s5.shape), final.reshape(h0_4.shape)


def _chunk_scan_kernel(x_ref, dt_ref, cum_ref, B_ref, C_ref, h_ref, y_ref, *, lay, target):
    """y for one chunk and head block. x/y [T, hb·P], dt/cum [hb, T], B/C [gb, T, N],
    h [hb, P, N] (chunk start states)."""
    vec = _Vec(target)
    P, cd = lay.Pp, lay.cd

    for gl in range(lay.gb):
        Bm, Cm = B_ref[gl], C_ref[gl]
        cb = _dot(Cm, Bm, (1, 1), cd)  # [t, s], once per group

        def head(r, carry, gl=gl, Cm=Cm, cb=cb):
            j = gl * lay.hpg + r
            cum = vec.load(cum_ref, j)
            cum_Tx1, decay_ts, _ = _ssd_decays(vec, cum)
            xdt = x_ref[:, _head_slice(j, P)].astype(_F32) * vec.col(vec.load(dt_ref, j))
            y = _dot(cb * decay_ts, xdt, (1, 0), cd)
            y = y + jnp.exp(cum_Tx1) * _dot_state(Cm, h_ref[j], (1, 1), cd)
            y_ref[:, _head_slice(j, P)] = y.astype(y_ref.dtype)
            return carry

        _loop(target, lay.hpg, head, 0)


def _chunk_bwd_kernel(
    x_ref, dt_ref, cum_ref, B_ref, C_ref, h_ref, dy_ref, g_ref,
    dx_ref, ddt_ref, dcum_ref, dB_ref, dC_ref, *, lay, target,
):  # fmt: skip
    """Gradients for one chunk and head block, from the chunk start states h and the
    cotangents g of the chunk end states. dB/dC: sums over the program's heads per group."""
    vec = _Vec(target)
    P, cd, T = lay.Pp, lay.cd, lay.T
    last_T = lax.broadcasted_iota(jnp.int32, (1, T), 1) == T - 1
    i0 = lax.broadcasted_iota(jnp.int32, (T, T), 0)
    i1 = lax.broadcasted_iota(jnp.int32, (T, T), 1)
    below, above = i0 > i1, i1 > i0

    for gl in range(lay.gb):
        Bm, Cm = B_ref[gl], C_ref[gl]
        cb_ts = _dot(Cm, Bm, (1, 1), cd)
        cb_st = _dot(Bm, Cm, (1, 1), cd)

        def head(r, acc, gl=gl, Bm=Bm, Cm=Cm, cb_ts=cb_ts, cb_st=cb_st):
            dB_acc, dC_acc = acc
            j = gl * lay.hpg + r
            cum = vec.load(cum_ref, j)
            dt = vec.load(dt_ref, j)
            cum_Tx1, decay_ts, decay_st = _ssd_decays(vec, cum)
            cum_T = _last(cum)
            to_end = vec.col(jnp.exp(cum_T - cum))
            x = x_ref[:, _head_slice(j, P)].astype(_F32)
            xdt = x * vec.col(dt)
            dy = dy_ref[:, _head_slice(j, P)].astype(_F32)
            h0, g = h_ref[j], g_ref[j]
            M_st = cb_st * decay_st
            # d(dt·x): from the in-chunk outputs and from the chunk end state.
            dxdt_state = to_end * _dot_state(Bm, g, (1, 1), cd)
            dxdt = _dot(M_st, dy, (1, 0), cd) + dxdt_state
            dx_ref[:, _head_slice(j, P)] = (dxdt * vec.col(dt)).astype(dx_ref.dtype)
            vec.store(ddt_ref, j, vec.rowsum(dxdt * x))
            # dC, dB through C·Bᵀ (in-chunk) and through h C / (dt x) ⊗ B (across chunks).
            dM_ts = _dot(dy, xdt, (1, 1), cd) * decay_ts
            dM_st = _dot(xdt, dy, (1, 1), cd) * decay_st
            dy_h = _dot_state(dy, h0, (1, 0), cd)
            dC = _dot(dM_ts, Bm, (1, 0), cd) + jnp.exp(cum_Tx1) * dy_h
            dB = _dot(dM_st, Cm, (1, 0), cd) + to_end * _dot(xdt, g, (1, 0), cd)
            # d cum: in-chunk decays, the carried state's decay exp(cum_t), the end state's.
            # the diagonal t = s adds to both sums and cancels: leave it out of both
            W_ts = jnp.where(below, dM_ts * cb_ts, 0.0)
            W_st = jnp.where(above, dM_st * cb_st, 0.0)
            dcum = jnp.sum(W_st, axis=0, keepdims=True) - jnp.sum(W_ts, axis=0, keepdims=True)
            dcum = dcum + jnp.exp(cum) * vec.rowsum(Cm.astype(_F32) * dy_h)
            u = vec.rowsum(xdt * dxdt_state)
            end = jnp.sum(u) + jnp.exp(cum_T) * jnp.sum(g * h0)
            dcum = dcum - u + jnp.where(last_T, end, 0.0)
            vec.store(dcum_ref, j, dcum)
            return dB_acc + dB, dC_acc + dC

        zeros = jnp.zeros((T, lay.Np), _F32)
        dB_acc, dC_acc = _loop(target, lay.hpg, head, (zeros, zeros))
        dB_ref[gl] = dB_acc
        dC_ref[gl] = dC_acc


def _ssd_inputs(x, dt, A, Bm, Cm, blocks, target):
    lay = _SSDLayout(x, Bm, blocks, target)
    dt4 = lay.vec(dt)
    cum4 = jnp.cumsum(dt4 * A.astype(_F32)[None, None, :, None], axis=3)
    dec4 = jnp.exp(cum4[..., -1:])  # [B, nc, H, 1]
    return lay, lay.seq(x), dt4, cum4, dec4, lay.bc(Bm), lay.bc(Cm)


def _chunk_scan_specs(lay):
    """BlockSpecs of the chunk scan's inputs (x, dt, cum, B, C, chunk start states), shared by
    the forward and the backward kernel."""
    return [
        lay.seq_spec(),
        lay.vec_spec(),
        lay.vec_spec(),
        lay.bc_spec(),
        lay.bc_spec(),
        lay.states_spec(),
    ]


@functools.partial(jax.jit, static_argnames=("blocks", "target", "interpret"))
def ssd_fwd(x, dt, A, Bm, Cm, h0, *, blocks, target, interpret):
    """SSD forward. Returns (y_BxLxHxP in x's dtype, final h float32, chunk start states
    [B, nc, H, Pp, Np] float32 — the backward's residual)."""
    lay, x2, dt4, cum4, dec4, B4, C4 = _ssd_inputs(x, dt, A, Bm, Cm, blocks, target)
    states = _chunk_outer(
        x2, dt4, cum4, B4, lay, blocks, target, interpret, "state", "ssd_chunk_state"
    )
    starts, h = _state_passing(
        states, dec4, lay.state(h0), lay, blocks, target, interpret, False, "ssd_state_passing"
    )
    y2 = pl.pallas_call(
        functools.partial(_chunk_scan_kernel, lay=lay, target=target),
        out_shape=jax.ShapeDtypeStruct(x2.shape, x.dtype),
        grid=(lay.B, lay.nc, lay.nblk),
        in_specs=_chunk_scan_specs(lay),
        out_specs=lay.seq_spec(),
        compiler_params=_compiler_params(target, ("parallel",) * 3, blocks),
        interpret=interpret,
        name="ssd_chunk_scan",
    )(x2, dt4, cum4, B4, C4, starts)
    return lay.unseq(y2), h[:, :, : lay.P, : lay.N], starts


@functools.partial(jax.jit, static_argnames=("blocks", "target", "interpret"))
def ssd_bwd(x, dt, A, Bm, Cm, starts, gy, gh, *, blocks, target, interpret):
    """SSD backward from the chunk start states. Returns (dx, ddt, dA, dB, dC, dh0) in the
    inputs' dtypes (dh0 float32)."""
    lay, x2, dt4, cum4, dec4, B4, C4 = _ssd_inputs(x, dt, A, Bm, Cm, blocks, target)
    dy2 = lay.seq(gy.astype(x.dtype) if x.dtype == jnp.bfloat16 else gy.astype(_F32))
    dstates = _chunk_outer(
        dy2, dt4, cum4, C4, lay, blocks, target, interpret, "dstate", "ssd_chunk_dstate"
    )
    g_ends, dh0 = _state_passing(
        dstates, dec4, lay.state(gh), lay, blocks, target, interpret, True, "ssd_state_passing_bwd"
    )
    part = jax.ShapeDtypeStruct((lay.B, lay.n_part, lay.Lp, lay.Np), _F32)
    vec_out = jax.ShapeDtypeStruct(dt4.shape, _F32)
    dx2, ddt4, dcum4, dBp, dCp = pl.pallas_call(
        functools.partial(_chunk_bwd_kernel, lay=lay, target=target),
        out_shape=[jax.ShapeDtypeStruct(x2.shape, x.dtype), vec_out, vec_out, part, part],
        grid=(lay.B, lay.nc, lay.nblk),
        in_specs=[*_chunk_scan_specs(lay), lay.seq_spec(), lay.states_spec()],  # + dy, g_ends
        out_specs=[
            lay.seq_spec(),
            lay.vec_spec(),
            lay.vec_spec(),
            lay.part_spec(),
            lay.part_spec(),
        ],
        compiler_params=_compiler_params(target, ("parallel",) * 3, blocks),
        interpret=interpret,
        name="ssd_chunk_scan_bwd",
    )(x2, dt4, cum4, B4, C4, starts, dy2, g_ends)
    # cum = in-chunk cumsum of dt·A: d(dt·A)_s = Σ_{t ≥ s} dcum_t.
    d_dtA4 = jnp.flip(jnp.cumsum(jnp.flip(dcum4, 3), axis=3), 3)
    A32 = A.astype(_F32)
    ddt = lay.unvec(ddt4 + d_dtA4 * A32[None, None, :, None])
    dA = jnp.sum(d_dtA4 * dt4, axis=(0, 1, 3))
    per_group = lambda p: p.reshape(lay.B, lay.G, lay.n_part // lay.G, lay.Lp, lay.Np).sum(2)
    dB, dC = lay.unbc(per_group(dBp)), lay.unbc(per_group(dCp))
    return (
        lay.unseq(dx2),
        ddt.astype(dt.dtype),
        dA.astype(A.dtype),
        dB.astype(Bm.dtype),
        dC.astype(Cm.dtype),
        dh0[:, :, : lay.P, : lay.N],
    )


# ----------------------------------------------------------------------------- Mamba-1


class _Rows:
    """K consecutive rows of a [positions, width] ref: TPU loads/stores one (K, width) tile
    (aligned, sliced in registers); GPU (Triton cannot slice register values) one row each."""

    def __init__(self, target, K):
        self.tpu, self.K = target == "tpu", K

    def load(self, ref, t0):
        if self.tpu:
            tile = ref[pl.ds(t0, self.K), :].astype(_F32)
            return [tile[r : r + 1, :] for r in range(self.K)]
        return [ref[pl.ds(t0 + r, 1), :].astype(_F32) for r in range(self.K)]

    def store(self, ref, t0, rows):
        if self.tpu:
            K, W = self.K, rows[0].shape[1]
            i0 = lax.broadcasted_iota(jnp.int32, (K, W), 0)
            tile = functools.reduce(
                jnp.add, [jnp.where(i0 == r, row, 0.0) for r, row in enumerate(rows)]
            )
            ref[pl.ds(t0, K), :] = tile.astype(ref.dtype)
        else:
            for r, row in enumerate(rows):
                ref[pl.ds(t0 + r, 1), :] = row.astype(ref.dtype)


def _sub_chunks(target, n, body, carry, reverse=False):
    """for k in range(n) (or reversed): carry = body(k, carry)."""
    if n == 1:
        return body(0, carry)

    def step(i, c):
        return body(n - 1 - i if reverse else i, c)

    return lax.fori_loop(0, n, step, carry)


def _selective_fwd_kernel(
    x_ref, dt_ref, A_ref, B_ref, C_ref, h0_ref, y_ref, h_ref, *rest, target, K, save
):
    """x/dt/y [T, bd]; A/h0/h [N, bd]; B/C [T, N]; hs (if save) [T/K, N, bd]: the state at
    the start of every K positions. T: one TPU chunk (grid axis 2) or the whole GPU length."""
    hs_ref = rest[0] if save else None
    scratch = rest[1:] if save else rest
    vec, rows = _Vec(target), _Rows(target, K)
    A = A_ref[...].astype(_F32)
    T = x_ref.shape[0]

    def sub(k, h):
        t0 = pl.multiple_of(k * K, K)
        if save:
            hs_ref[k] = h
        x, dt, Bm, Cm = (rows.load(r, t0) for r in (x_ref, dt_ref, B_ref, C_ref))
        ys = []
        for r in range(K):
            h = jnp.exp(dt[r] * A) * h + vec.col(Bm[r]) * (dt[r] * x[r])
            ys.append(jnp.sum(vec.col(Cm[r]) * h, axis=0, keepdims=True))
        rows.store(y_ref, t0, ys)
        return h

    if target == "tpu":
        (state_ref,) = scratch
        c = pl.program_id(2)

        @pl.when(c == 0)
        def _():
            state_ref[...] = h0_ref[...].astype(_F32)

        state_ref[...] = _sub_chunks(target, T // K, sub, state_ref[...])

        @pl.when(c == pl.num_programs(2) - 1)
        def _():
            h_ref[...] = state_ref[...]

    else:
        h_ref[...] = _sub_chunks(target, T // K, sub, h0_ref[...].astype(_F32))


def _selective_bwd_kernel(
    x_ref, dt_ref, A_ref, B_ref, C_ref, hs_ref, dy_ref, gh_ref,
    dx_ref, ddt_ref, dB_ref, dC_ref, dA_ref, dh0_ref, *scratch, target, K,
):  # fmt: skip
    """Reverse over the sub-chunks of K positions: recompute the K states from the saved
    start state, then step back through them. dB/dC: sums over this program's channels."""
    vec, rows = _Vec(target), _Rows(target, K)
    A = A_ref[...].astype(_F32)
    T = x_ref.shape[0]

    def sub(k, carry):
        g, dA = carry
        t0 = pl.multiple_of(k * K, K)
        x, dt, Bm, Cm, dy = (rows.load(r, t0) for r in (x_ref, dt_ref, B_ref, C_ref, dy_ref))
        Bc = [vec.col(b) for b in Bm]
        Cc = [vec.col(c) for c in Cm]
        decays = [jnp.exp(dt[r] * A) for r in range(K)]
        states = [hs_ref[k]]
        for r in range(K):
            states.append(decays[r] * states[r] + Bc[r] * (dt[r] * x[r]))
        dx, ddt, dB, dC = [None] * K, [None] * K, [None] * K, [None] * K
        for r in reversed(range(K)):
            g = g + Cc[r] * dy[r]  # dL/dh_r
            dC[r] = vec.row(jnp.sum(states[r + 1] * dy[r], axis=1, keepdims=True))
            dxdt = jnp.sum(g * Bc[r], axis=0, keepdims=True)
            dx[r] = dxdt * dt[r]
            d_dtA = g * decays[r] * states[r]
            ddt[r] = dxdt * x[r] + jnp.sum(d_dtA * A, axis=0, keepdims=True)
            dA = dA + d_dtA * dt[r]
            dB[r] = vec.row(jnp.sum(g * (dt[r] * x[r]), axis=1, keepdims=True))
            g = decays[r] * g  # to dL/dh_{r-1}
        for ref, vals in ((dx_ref, dx), (ddt_ref, ddt), (dB_ref, dB), (dC_ref, dC)):
            rows.store(ref, t0, vals)
        return g, dA

    if target == "tpu":
        g_ref, dA_acc = scratch
        c = pl.program_id(2)

        @pl.when(c == 0)
        def _():
            g_ref[...] = gh_ref[...].astype(_F32)
            dA_acc[...] = jnp.zeros_like(dA_acc)

        g, dA = _sub_chunks(target, T // K, sub, (g_ref[...], dA_acc[...]), reverse=True)
        g_ref[...] = g
        dA_acc[...] = dA

        @pl.when(c == pl.num_programs(2) - 1)
        def _():
            dh0_ref[...] = g_ref[...]
            dA_ref[...] = dA_acc[...]

    else:
        init = (gh_ref[...].astype(_F32), jnp.zeros(A.shape, _F32))
        g, dA = _sub_chunks(target, T // K, sub, init, reverse=True)
        dh0_ref[...] = g
        dA_ref[...] = dA


class _SelectiveLayout:
    def __init__(self, x, A, blocks, target):
        self.B, self.L, self.D = x.shape
        self.N = A.shape[1]
        self.K, self.bd = blocks.sub, blocks.channels
        self.T = blocks.chunk if target == "tpu" else self.K
        self.Lp = _cdiv(self.L, self.T) * self.T
        self.nc = self.Lp // self.T if target == "tpu" else 1
        self.Dp = _cdiv(self.D, self.bd) * self.bd
        self.Np = _dispatch.next_pow2(self.N) if target == "gpu" else self.N
        self.nD = self.Dp // self.bd
        self.tpu = target == "tpu"

    def rows(self, a):  # [B, L, D] -> [B, Lp, Dp]
        return _pad_to(_pad_to(a, 1, self.Lp), 2, self.Dp)

    def cols(self, a):  # [B, L, N] -> [B, Lp, Np]
        return _pad_to(_pad_to(a, 1, self.Lp), 2, self.Np)

    def state(self, h_BxDxN):  # -> [B, Np, Dp]
        h = jnp.swapaxes(h_BxDxN.astype(_F32), 1, 2)
        return _pad_to(_pad_to(h, 1, self.Np), 2, self.Dp)

    def unstate(self, h_BxNpxDp):
        return jnp.swapaxes(h_BxNpxDp[:, : self.N, : self.D], 1, 2)

    def grid(self):
        return (self.B, self.nD, self.nc) if self.tpu else (self.B, self.nD)

    def _map(self, f, reverse=False):
        if self.tpu:
            nc = self.nc
            return lambda b, i, c: f(b, i, nc - 1 - c if reverse else c)
        return lambda b, i: f(b, i, 0)

    def row_spec(self, reverse=False):
        rows = self.T if self.tpu else self.Lp
        return pl.BlockSpec((None, rows, self.bd), self._map(lambda b, i, c: (b, c, i), reverse))

    def col_spec(self, reverse=False):
        rows = self.T if self.tpu else self.Lp
        return pl.BlockSpec((None, rows, self.Np), self._map(lambda b, i, c: (b, c, 0), reverse))

    def part_spec(self, reverse=False):
        rows = self.T if self.tpu else self.Lp
        return pl.BlockSpec(
            (None, None, rows, self.Np), self._map(lambda b, i, c: (b, i, c, 0), reverse)
        )

    def A_spec(self):
        return pl.BlockSpec((self.Np, self.bd), self._map(lambda b, i, c: (0, i)))

    def state_spec(self):
        return pl.BlockSpec((None, self.Np, self.bd), self._map(lambda b, i, c: (b, 0, i)))

    def saved_spec(self, reverse=False):
        n = (self.T if self.tpu else self.Lp) // self.K
        return pl.BlockSpec(
            (None, n, self.Np, self.bd), self._map(lambda b, i, c: (b, c, 0, i), reverse)
        )

    def semantics(self):
        return ("parallel", "parallel", "arbitrary") if self.tpu else ("parallel", "parallel")

    def scratch(self, n):
        return [_tpu_vmem((self.Np, self.bd)) for _ in range(n)] if self.tpu else []


@functools.partial(jax.jit, static_argnames=("blocks", "target", "interpret", "save"))
def selective_scan_fwd(x, dt, A, Bm, Cm, h0, *, blocks, target, interpret, save=True):
    """Selective-scan forward. Returns (y_BxLxD in x's dtype, final h_BxDxN float32, and if
    `save` the states every K positions [B, Lp/K, Np, Dp] float32 — the backward's residual)."""
    lay = _SelectiveLayout(x, A, blocks, target)
    A2 = _pad_to(_pad_to(A.astype(_F32).T, 0, lay.Np), 1, lay.Dp)
    out_shape = [
        jax.ShapeDtypeStruct((lay.B, lay.Lp, lay.Dp), x.dtype),
        jax.ShapeDtypeStruct((lay.B, lay.Np, lay.Dp), _F32),
    ]
    out_specs = [lay.row_spec(), lay.state_spec()]
    if save:
        out_shape.append(jax.ShapeDtypeStruct((lay.B, lay.Lp // lay.K, lay.Np, lay.Dp), _F32))
        out_specs.append(lay.saved_spec())
    outs = pl.pallas_call(
        functools.partial(_selective_fwd_kernel, target=target, K=lay.K, save=save),
        out_shape=out_shape,
        grid=lay.grid(),
        in_specs=[
            lay.row_spec(),
            lay.row_spec(),
            lay.A_spec(),
            lay.col_spec(),
            lay.col_spec(),
            lay.state_spec(),
        ],
        out_specs=out_specs,
        scratch_shapes=lay.scratch(1),
        compiler_params=_compiler_params(target, lay.semantics(), blocks),
        interpret=interpret,
        name="selective_scan_fwd",
    )(lay.rows(x), lay.rows(dt), A2, lay.cols(Bm), lay.cols(Cm), lay.state(h0))
    y, h = outs[0][:, : lay.L, : lay.D], lay.unstate(outs[1])
    return (y, h, outs[2]) if save else (y, h)


@functools.partial(jax.jit, static_argnames=("blocks", "target", "interpret"))
def selective_scan_bwd(x, dt, A, Bm, Cm, saved, gy, gh, *, blocks, target, interpret):
    """Selective-scan backward from the saved states. Returns (dx, ddt, dA, dB, dC, dh0)."""
    lay = _SelectiveLayout(x, A, blocks, target)
    A2 = _pad_to(_pad_to(A.astype(_F32).T, 0, lay.Np), 1, lay.Dp)
    rev = dict(reverse=True)
    part = jax.ShapeDtypeStruct((lay.B, lay.nD, lay.Lp, lay.Np), _F32)
    state = jax.ShapeDtypeStruct((lay.B, lay.Np, lay.Dp), _F32)
    dx, ddt, dBp, dCp, dA, dh0 = pl.pallas_call(
        functools.partial(_selective_bwd_kernel, target=target, K=lay.K),
        out_shape=[
            jax.ShapeDtypeStruct((lay.B, lay.Lp, lay.Dp), x.dtype),
            jax.ShapeDtypeStruct((lay.B, lay.Lp, lay.Dp), _F32),
            part,
            part,
            state,
            state,
        ],
        grid=lay.grid(),
        in_specs=[
            lay.row_spec(**rev),
            lay.row_spec(**rev),
            lay.A_spec(),
            lay.col_spec(**rev),
            lay.col_spec(**rev),
            lay.saved_spec(**rev),
            lay.row_spec(**rev),
            lay.state_spec(),
        ],
        out_specs=[
            lay.row_spec(**rev),
            lay.row_spec(**rev),
            lay.part_spec(**rev),
            lay.part_spec(**rev),
            lay.state_spec(),
            lay.state_spec(),
        ],
        scratch_shapes=lay.scratch(2),
        compiler_params=_compiler_params(target, lay.semantics(), blocks),
        interpret=interpret,
        name="selective_scan_bwd",
    )(
        lay.rows(x),
        lay.rows(dt),
        A2,
        lay.cols(Bm),
        lay.cols(Cm),
        saved,
        lay.rows(gy.astype(x.dtype) if x.dtype == jnp.bfloat16 else gy.astype(_F32)),
        lay.state(gh),
    )
    L, D, N = lay.L, lay.D, lay.N
    return (
        dx[:, :L, :D],
        ddt[:, :L, :D].astype(dt.dtype),
        jnp.sum(dA, axis=0)[:N, :D].T.astype(A.dtype),
        jnp.sum(dBp, axis=1)[:, :L, :N].astype(Bm.dtype),
        jnp.sum(dCp, axis=1)[:, :L, :N].astype(Cm.dtype),
        lay.unstate(dh0),
    )
