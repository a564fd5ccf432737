"""Llama-family weights from GGUF files (llama.cpp's format) as `TransformerConfig` + params.

    config, params = load_llama_gguf(path)        # float32, Llama style, ready for `apply`

Quantised tensors (Q4_0, Q4_1, Q8_0, K-quants, ... whatever the `gguf` package knows) are
dequantised to float32. GGUF stores each matrix as [out, in] (PyTorch order); our params are
[in, out]. llama.cpp's converter reorders the rows of every Q and K head so rotary pairs are
adjacent ((2i, 2i+1), "interleaved" RoPE); our transformer rotates dimension i with i + E/2
("half-split", as Hugging Face Llama). `unpermute_qk` undoes the reordering.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Mapping
from typing import NamedTuple

import numpy as np

from l2m_jax.models.transformer import TransformerConfig

__all__ = [
    "GGUFContents",
    "llama_config",
    "llama_params",
    "load_llama_gguf",
    "read_gguf",
    "unpermute_qk",
]

_LLAMA_ARCHS = ("llama",)
_LAYER_TENSORS = (
    "attn_norm",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_norm",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
)


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
    """GGUF's Q or K matrix [heads·E, in] (rotary pairs at rows 2i, 2i+1 of each head) in
    half-split order (pairs at rows i, i + E/2)."""
    rows = w_OxI.shape[0]
    if rows % (2 * n_heads):
        raise ValueError(f"{rows} rows do not split into {n_heads} heads of even size")
    head_dim = rows // n_heads
    return w_OxI.reshape(n_heads, head_dim // 2, 2, -1).swapaxes(1, 2).reshape(w_OxI.shape)


def llama_config(
    metadata: dict, tensors: Mapping[str, np.ndarray] | None = None, **overrides
) -> TransformerConfig:
    """The Llama-style `TransformerConfig` a GGUF file's metadata describes."""
    arch = metadata.get("general.architecture")
    if arch not in _LLAMA_ARCHS:
        raise ValueError(
            f"GGUF architecture {arch!r} is not supported; only Llama-family "
            f"files ({', '.join(_LLAMA_ARCHS)}) map onto TransformerConfig"
        )

    def need(key):
        if f"{arch}.{key}" not in metadata:
            raise ValueError(f"GGUF metadata lacks {arch}.{key}; the file is incomplete")
        return metadata[f"{arch}.{key}"]

    d_model, n_heads = int(need("embedding_length")), int(need("attention.head_count"))
    head_dim = d_model // n_heads
    for key in ("attention.key_length", "attention.value_length", "rope.dimension_count"):
        if int(metadata.get(f"{arch}.{key}", head_dim)) != head_dim:
            raise ValueError(
                f"{arch}.{key}={metadata[f'{arch}.{key}']} differs from "
                f"d_model / n_heads = {head_dim}; such models are not supported"
            )
    scaling = metadata.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", None) or (tensors is not None and "rope_freqs.weight" in tensors):
        raise ValueError(
            "rotary scaling (Llama 3.1-style rope_freqs / rope.scaling) is not "
            "supported; use a checkpoint with plain RoPE"
        )
    bos = metadata.get("tokenizer.ggml.bos_token_id")
    vocab = metadata.get(f"{arch}.vocab_size")
    if vocab is None and tensors is not None and "token_embd.weight" in tensors:
        vocab = tensors["token_embd.weight"].shape[0]
    if vocab is None:
        raise ValueError(
            f"GGUF metadata lacks {arch}.vocab_size and no token_embd tensor "
            "was given; the file is incomplete"
        )
    fields = dict(
        style="llama",
        vocab_size=int(vocab),
        d_model=d_model,
        n_layers=int(need("block_count")),
        n_heads=n_heads,
        n_kv_heads=int(metadata.get(f"{arch}.attention.head_count_kv", n_heads)),
        d_ff=int(need("feed_forward_length")),
        max_positions=0,
        rope_theta=float(metadata.get(f"{arch}.rope.freq_base", 10_000.0)),
        norm_eps=float(metadata.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5)),
        tie_embeddings=tensors is None or "output.weight" not in tensors,
        bos_id=0 if bos is None else int(bos),
    )
    fields.update(overrides)
    return TransformerConfig(**fields)


def llama_params(config: TransformerConfig, tensors: Mapping[str, np.ndarray]) -> dict:
    """Maps GGUF tensors (float32, [out, in]) onto the transformer's param pytree (NumPy
    float32 arrays on the host; `jax.device_put` or `pretrained.shard_params` them)."""
    n, H, K = config.n_layers, config.n_heads, config.kv_heads
    expected = {"token_embd.weight", "output_norm.weight"}
    expected |= {f"blk.{i}.{t}.weight" for i in range(n) for t in _LAYER_TENSORS}
    if not config.tie_embeddings:
        expected.add("output.weight")
    missing = sorted(expected - tensors.keys())
    extra = sorted(k for k in tensors.keys() - expected if k != "rope_freqs.weight")
    if missing or extra:
        raise ValueError(
            f"GGUF tensors do not match a {n}-layer Llama model: missing "
            f"{missing[:4]}, unexpected {extra[:4]} (biases or other "
            "architectures are not supported)"
        )

    def stack(name, fn=lambda w: w.T):
        return np.stack([fn(tensors[f"blk.{i}.{name}.weight"]) for i in range(n)])

    params = {
        "embed": {"tokens": tensors["token_embd.weight"]},
        "layers": {
            "attn_norm": {"scale": stack("attn_norm", lambda w: w)},
            "attn": {
                "wq": stack("attn_q", lambda w: unpermute_qk(w, H).T),
                "wk": stack("attn_k", lambda w: unpermute_qk(w, K).T),
                "wv": stack("attn_v"),
                "wo": stack("attn_output"),
            },
            "mlp_norm": {"scale": stack("ffn_norm", lambda w: w)},
            "mlp": {
                "w_gate": stack("ffn_gate"),
                "w_up": stack("ffn_up"),
                "w_down": stack("ffn_down"),
            },
        },
        "final_norm": {"scale": tensors["output_norm.weight"]},
    }
    if not config.tie_embeddings:
        params["head"] = {"unembed": tensors["output.weight"].T}
    want = {
        "embed": (config.vocab_size, config.d_model),
        "wq": (n, config.d_model, H * config.head_dim),
        "wk": (n, config.d_model, K * config.head_dim),
        "w_gate": (n, config.d_model, config.ff_dim),
    }
    got = {
        "embed": params["embed"]["tokens"].shape,
        "wq": params["layers"]["attn"]["wq"].shape,
        "wk": params["layers"]["attn"]["wk"].shape,
        "w_gate": params["layers"]["mlp"]["w_gate"].shape,
    }
    if want != got:
        raise ValueError(f"GGUF tensor shapes {got} do not match the metadata's {want}")
    return params


def load_llama_gguf(path: str | os.PathLike, **overrides) -> tuple[TransformerConfig, dict]:
    """(config, params) of a Llama-family GGUF file; `overrides` replace config fields."""
    import jax
    import jax.numpy as jnp

    metadata, tensors = read_gguf(path)
    config = llama_config(metadata, tensors, **overrides)
    return config, jax.tree.map(jnp.asarray, llama_params(config, tensors))
