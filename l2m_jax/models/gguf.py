"""Llama-family weights from GGUF files (llama.cpp's format) as `TransformerConfig` + params.

    config, params = load_llama_gguf(path)        # float32, Llama style, ready for `apply`

Architectures: llama (Llama 2/3/3.1, Mistral, SmolLM2; optional attention biases, linear RoPE
scaling or Llama 3.1's `rope_freqs` divisors), qwen2 (q/k/v biases), qwen3 (q/k norms).

Quantised tensors (Q4_0, Q4_1, Q8_0, K-quants, ... whatever the `gguf` package knows) are
dequantised to float32. GGUF stores each matrix as [out, in] (PyTorch order); our params are
[in, out]. llama.cpp's converter reorders the rows of every Q and K head so rotary pairs are
adjacent ((2i, 2i+1), "interleaved" RoPE) in llama files; our transformer rotates dimension i
with i + E/2 ("half-split", as Hugging Face Llama). `unpermute_qk` undoes the reordering.
qwen2/qwen3 files keep the half-split order (llama.cpp runs them with NeoX-style RoPE).
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from l2m_jax.models.transformer import RopeScaling, TransformerConfig

__all__ = [
    "GGUFContents",
    "llama_config",
    "llama_params",
    "load_llama_gguf",
    "read_gguf",
    "unpermute_qk",
]

_ARCHS = ("llama", "qwen2", "qwen3")
_PERMUTED = ("llama",)  # architectures whose Q/K rows llama.cpp's converter reorders


class GGUFContents(NamedTuple):
    """metadata: key -> Python value (tokenizer arrays left out); tensors: name -> float32
    array in GGUF's [out, in] order, dequantised when looked up."""

    metadata: dict
    tensors: Mapping[str, np.ndarray]


def read_gguf(path: str | os.PathLike, *, tensors: bool = True) -> GGUFContents:
    """Reads a GGUF file: metadata and (dequantised, float32, GGUF [out, in] order) tensors."""
    import gguf

    path = pathlib.Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"no GGUF file at {path}")
    try:
        reader = gguf.GGUFReader(str(path))
    except Exception as err:  # the gguf package raises several kinds on a bad file
        raise ValueError(f"{path} is not a readable GGUF file: {err}") from err
    skip = (
        "tokenizer.ggml.tokens",
        "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type",
        "tokenizer.ggml.scores",
    )
    metadata = {k: f.contents() for k, f in reader.fields.items() if k not in skip}
    return GGUFContents(metadata, _Dequantized(path, reader) if tensors else {})


class _Dequantized(Mapping):
    """name -> float32 array, dequantised on each access (peak memory: one tensor)."""

    def __init__(self, path: pathlib.Path, reader):
        self._path = path
        self._tensors = {t.name: t for t in reader.tensors}

    def __getitem__(self, name: str) -> np.ndarray:
        import gguf

        t = self._tensors[name]
        try:
            values = gguf.quants.dequantize(t.data, t.tensor_type)
        except NotImplementedError as err:
            raise ValueError(
                f"{self._path}: tensor {name} has type {t.tensor_type.name}, which the "
                f"installed gguf package cannot dequantise: {err}"
            ) from err
        return np.asarray(values, np.float32).reshape(tuple(reversed(t.shape.tolist())))

    def __iter__(self):
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)


def unpermute_qk(w_OxI: np.ndarray, n_heads: int) -> np.ndarray:
    """GGUF's Q or K matrix [heads·E, in] (or bias [heads·E]; rotary pairs at rows 2i, 2i+1
    of each head) in half-split order (pairs at rows i, i + E/2)."""
    rows = w_OxI.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    head_dim = rows // n_heads
    return w_OxI.reshape(n_heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


def llama_config(
    metadata: dict, tensors: Mapping[str, np.ndarray] | None = None, **overrides
) -> TransformerConfig:
    """The Llama-style `TransformerConfig` a GGUF file's metadata describes (architectures
    llama, qwen2, qwen3), with its RoPE scaling (`rope.scaling.type` linear, or the
    per-frequency divisors of a `rope_freqs` tensor: Llama 3.1), attention biases (when the
    file has them; always for qwen2) and q/k norms (qwen3)."""
    arch = metadata.get("general.architecture")
    if arch not in _ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; only {', '.join(_ARCHS)} files map "
            "onto TransformerConfig"
        )

    def need(key):
        if f"{arch}.{key}" not in metadata:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return metadata[f"{arch}.{key}"]

    d_model, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = int(metadata.get(f"{arch}.attention.key_length", d_model // n_heads))
    for key in ("attention.value_length", "rope.dimension_count"):
        if int(metadata.get(f"{arch}.{key}", head_dim)) != head_dim:
            raise ValueError(
                f"{arch}.{key}={metadata[f'{arch}.{key}']} differs from the head size "
                f"{head_dim}; such models are not supported"
            )
    has = lambda name: tensors is not None and name in tensors
    scaling_type = metadata.get(f"{arch}.rope.scaling.type", "none") or "none"
    scaling = None
    if scaling_type == "linear":
        scaling = RopeScaling("linear", factor=float(need("rope.scaling.factor")))
    elif scaling_type != "none":
        raise ValueError(
            f"GGUF {arch}.rope.scaling.type {scaling_type!r} is not supported (none, linear, "
            "or Llama 3.1's rope_freqs tensor)"
        )
    if has("rope_freqs.weight"):
        if scaling is not None:
            raise ValueError("GGUF file has both rope.scaling.type linear and rope_freqs")
        divisors = np.asarray(tensors["rope_freqs.weight"], np.float64).reshape(-1)
        scaling = RopeScaling("divisors", divisors=tuple(float(d) for d in divisors))
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    vocab = metadata.get(f"{arch}.vocab_size")
    if vocab is None and has("token_embd.weight"):
        vocab = tensors["token_embd.weight"].shape[0]
    if vocab is None:
        raise ValueError(
            f"GGUF metadata lacks {arch}.vocab_size and no token_embd tensor "
            "was given; the file is incomplete"
        )
    attn_bias = arch == "qwen2" or has("blk.0.attn_q.bias")
    fields = dict(
        style="llama",
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv", n_heads)),
        d_head=head_dim,
        d_ff=int(need("feed_forward_length")),
        max_positions=0,
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10_000.0)),
        rope_scaling=scaling,
        norm_eps=float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        attn_bias=attn_bias,
        attn_out_bias=has("blk.0.attn_output.bias"),
        qk_norm=arch == "qwen3",
        tie_embeddings=tensors is None or "output.weight" not in tensors,
        bos_id=0 if bos is None else int(bos),
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


# Our parameter path -> GGUF tensor name ("{i}" is the layer), as llama.cpp's converter writes
# llama, qwen2 and qwen3 files. Matrices are [out, in] in GGUF and transposed for us.
_TABLE = {
    "embed/tokens": "token_embd.weight",
    "layers/attn_norm/scale": "blk.{i}.attn_norm.weight",
    "layers/attn/wq": "blk.{i}.attn_q.weight",
    "layers/attn/wk": "blk.{i}.attn_k.weight",
    "layers/attn/wv": "blk.{i}.attn_v.weight",
    "layers/attn/wo": "blk.{i}.attn_output.weight",
    "layers/attn/bq": "blk.{i}.attn_q.bias",
    "layers/attn/bk": "blk.{i}.attn_k.bias",
    "layers/attn/bv": "blk.{i}.attn_v.bias",
    "layers/attn/bo": "blk.{i}.attn_output.bias",
    "layers/attn/q_norm": "blk.{i}.attn_q_norm.weight",
    "layers/attn/k_norm": "blk.{i}.attn_k_norm.weight",
    "layers/mlp_norm/scale": "blk.{i}.ffn_norm.weight",
    "layers/mlp/w_gate": "blk.{i}.ffn_gate.weight",
    "layers/mlp/w_up": "blk.{i}.ffn_up.weight",
    "layers/mlp/w_down": "blk.{i}.ffn_down.weight",
    "final_norm/scale": "output_norm.weight",
    "head/unembed": "output.weight",
}
_MATRIX_LEAVES = ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down", "unembed")


def llama_params(
    config: TransformerConfig, tensors: Mapping[str, np.ndarray], architecture: str = "llama"
) -> dict:
    """Maps GGUF tensors (float32, [out, in]) onto the transformer's param pytree (NumPy
    float32 arrays on the host; `jax.device_put` or `pretrained.shard_params` them).

    Q and K (weights and biases) are un-permuted when the file is a llama one (llama.cpp's
    converter permutes them for its interleaved RoPE; qwen2/qwen3 files keep Hugging Face's
    half-split order). Every tensor's shape is checked against the metadata's."""
    import jax

    from l2m_jax import models

    if architecture not in _ARCHS:
        raise ValueError(f"architecture must be one of {_ARCHS}, got {architecture!r}")
    permuted = architecture in _PERMUTED
    abstract = jax.eval_shape(lambda: models.init(config, jax.random.key(0)))
    used = {"rope_freqs.weight"}
    out: dict = {}
    for path_keys, leaf in jax.tree_util.tree_leaves_with_path(abstract):
        path = "/".join(str(getattr(k, "key", k)) for k in path_keys)
        name = _TABLE.get(path)
        if name is None:
            raise ValueError(f"GGUF import has no tensor for our parameter {path}")
        key = path.split("/")[-1]
        stacked = path.startswith("layers/")
        names = [name.format(i=i) for i in range(config.n_layers)] if stacked else [name]
        per_layer = leaf.shape[1:] if stacked else leaf.shape
        arrays = []
        for n in names:
            if n not in tensors:
                raise ValueError(
                    f"GGUF tensor {n} is missing (our {path}); the file does not hold a "
                    f"{config.n_layers}-layer model as its metadata describes"
                )
            w = np.asarray(tensors[n], np.float32)
            if permuted and key in ("wq", "bq"):
                w = unpermute_qk(w, config.n_heads)
            elif permuted and key in ("wk", "bk"):
                w = unpermute_qk(w, config.kv_heads)
            if key in _MATRIX_LEAVES:
                w = w.T
            if w.shape != tuple(per_layer):
                raise ValueError(
                    f"GGUF tensor {n} has shape {list(w.shape)} (ours), but the metadata "
                    f"implies {list(per_layer)}"
                )
            arrays.append(w)
            used.add(n)
        value = np.stack(arrays) if stacked else arrays[0]
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    extra = sorted(set(tensors.keys()) - used)
    if extra:
        raise ValueError(
            f"GGUF tensors {extra[:4]} are not used by a {config.n_layers}-layer model as the "
            "metadata describes it (an option this import does not support)"
        )
    return out


def load_llama_gguf(path: str | os.PathLike, **overrides) -> tuple[TransformerConfig, dict]:
    """(config, params) of a llama, qwen2 or qwen3 GGUF file; `overrides` replace config
    fields."""
    import jax
    import jax.numpy as jnp

    metadata, tensors = read_gguf(path)
    config = llama_config(metadata, tensors, **overrides)
    params = llama_params(config, tensors, metadata["general.architecture"])
    return config, jax.tree.map(jnp.asarray, params)
