"""Forward pass, batch 1 x 1024 tokens: our jitted models against Hugging Face PyTorch on CPU.

  python -m benchmarks.models [--seq-len 1024] [--repeats 5] [--json PATH]

Configs (DESIGN.md's reference timings): Mamba hidden 256, 4 layers, state 16, vocab 1000;
GPT-2 width 256, 4 heads, 4 layers, vocab 1000. Both sides run the same weights (ours,
copied into the PyTorch model), so the benchmark also reports the largest logit difference.
Medians of several runs; our compile time is reported apart. Targets: ours >= 5x faster for
Mamba, >= 2x for GPT-2. The baseline needs the `bench` extra:
`pip install -e .[bench]` (torch==2.13.0 + transformers).
"""

from __future__ import annotations

import argparse
import functools

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn, time_host
from l2m_jax import models
from l2m_jax.experiments._common import print_table, write_json

CASES = {
    "mamba": (
        models.MambaConfig(vocab_size=1000, d_model=256, n_layers=4, d_state=16),
        5.0,
    ),
    "gpt2": (
        models.TransformerConfig(
            style="gpt2", vocab_size=1000, d_model=256, n_layers=4, n_heads=4, max_positions=1024
        ),
        2.0,
    ),
}


# ----------------------------------------------------------------------------- weight copies


def _np(a):
    return np.asarray(a, dtype=np.float32)


def hf_state_dict(config, params) -> dict[str, np.ndarray]:
    """Our params as a Hugging Face state dict (GPT2LMHeadModel, LlamaForCausalLM,
    MambaForCausalLM or Mamba2ForCausalLM naming; torch Linear weights are [out, in], GPT-2's
    Conv1D [in, out])."""
    L = params["layers"]
    sd: dict[str, np.ndarray] = {}
    if isinstance(config, models.TransformerConfig) and config.style == "gpt2":
        sd["transformer.wte.weight"] = _np(params["embed"]["tokens"])
        sd["transformer.wpe.weight"] = _np(params["positions"])
        sd["transformer.ln_f.weight"] = _np(params["final_norm"]["scale"])
        sd["transformer.ln_f.bias"] = _np(params["final_norm"]["bias"])
        a, m = L["attn"], L["mlp"]
        for i in range(config.n_layers):
            p = f"transformer.h.{i}."
            sd[p + "ln_1.weight"] = _np(L["attn_norm"]["scale"][i])
            sd[p + "ln_1.bias"] = _np(L["attn_norm"]["bias"][i])
            sd[p + "ln_2.weight"] = _np(L["mlp_norm"]["scale"][i])
            sd[p + "ln_2.bias"] = _np(L["mlp_norm"]["bias"][i])
            sd[p + "attn.c_attn.weight"] = np.concatenate(
                [_np(a["wq"][i]), _np(a["wk"][i]), _np(a["wv"][i])], axis=1
            )
            sd[p + "attn.c_attn.bias"] = np.concatenate(
                [_np(a["bq"][i]), _np(a["bk"][i]), _np(a["bv"][i])]
            )
            sd[p + "attn.c_proj.weight"] = _np(a["wo"][i])
            sd[p + "attn.c_proj.bias"] = _np(a["bo"][i])
            sd[p + "mlp.c_fc.weight"] = _np(m["w_in"][i])
            sd[p + "mlp.c_fc.bias"] = _np(m["b_in"][i])
            sd[p + "mlp.c_proj.weight"] = _np(m["w_out"][i])
            sd[p + "mlp.c_proj.bias"] = _np(m["b_out"][i])
    elif isinstance(config, models.TransformerConfig):
        sd["model.embed_tokens.weight"] = _np(params["embed"]["tokens"])
        sd["model.norm.weight"] = _np(params["final_norm"]["scale"])
        a, m = L["attn"], L["mlp"]
        for i in range(config.n_layers):
            p = f"model.layers.{i}."
            sd[p + "input_layernorm.weight"] = _np(L["attn_norm"]["scale"][i])
            sd[p + "post_attention_layernorm.weight"] = _np(L["mlp_norm"]["scale"][i])
            for ours, theirs in (("wq", "q"), ("wk", "k"), ("wv", "v"), ("wo", "o")):
                sd[p + f"self_attn.{theirs}_proj.weight"] = _np(a[ours][i]).T
            for ours, theirs in (("w_gate", "gate"), ("w_up", "up"), ("w_down", "down")):
                sd[p + f"mlp.{theirs}_proj.weight"] = _np(m[ours][i]).T
    elif isinstance(config, models.MambaConfig):
        sd["backbone.embeddings.weight"] = _np(params["embed"]["tokens"])
        sd["backbone.norm_f.weight"] = _np(params["final_norm"]["scale"])
        for i in range(config.n_layers):
            p = f"backbone.layers.{i}."
            sd[p + "norm.weight"] = _np(L["norm"]["scale"][i])
            sd[p + "mixer.in_proj.weight"] = _np(L["in_proj"][i]).T
            sd[p + "mixer.conv1d.weight"] = _np(L["conv_w"][i]).T[:, None, :]
            sd[p + "mixer.conv1d.bias"] = _np(L["conv_b"][i])
            sd[p + "mixer.x_proj.weight"] = _np(L["x_proj"][i]).T
            sd[p + "mixer.dt_proj.weight"] = _np(L["dt_proj"][i]).T
            sd[p + "mixer.dt_proj.bias"] = _np(L["dt_bias"][i])
            sd[p + "mixer.A_log"] = _np(L["A_log"][i])
            sd[p + "mixer.D"] = _np(L["D"][i])
            sd[p + "mixer.out_proj.weight"] = _np(L["out_proj"][i]).T
    elif isinstance(config, models.Mamba2Config):
        sd["backbone.embeddings.weight"] = _np(params["embed"]["tokens"])
        sd["backbone.norm_f.weight"] = _np(params["final_norm"]["scale"])
        for i in range(config.n_layers):
            p = f"backbone.layers.{i}."
            sd[p + "norm.weight"] = _np(L["norm"]["scale"][i])
            sd[p + "mixer.in_proj.weight"] = _np(L["in_proj"][i]).T
            sd[p + "mixer.conv1d.weight"] = _np(L["conv_w"][i]).T[:, None, :]
            sd[p + "mixer.conv1d.bias"] = _np(L["conv_b"][i])
            sd[p + "mixer.dt_bias"] = _np(L["dt_bias"][i])
            sd[p + "mixer.A_log"] = _np(L["A_log"][i])
            sd[p + "mixer.D"] = _np(L["D"][i])
            sd[p + "mixer.norm.weight"] = _np(L["gate_norm"][i])
            sd[p + "mixer.out_proj.weight"] = _np(L["out_proj"][i]).T
    else:
        raise TypeError(f"no Hugging Face counterpart for {type(config).__name__}")
    return sd


def hf_model(config, params):
    """The Hugging Face PyTorch model with our weights (needs torch and transformers)."""
    import torch
    import transformers

    if isinstance(config, models.MambaConfig):
        hf_config = transformers.MambaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            num_hidden_layers=config.n_layers,
            state_size=config.d_state,
            conv_kernel=config.d_conv,
            expand=config.expand,
            time_step_rank=config.time_step_rank,
            layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=True,
        )
        model = transformers.MambaForCausalLM(hf_config)
    elif isinstance(config, models.Mamba2Config):
        hf_config = transformers.Mamba2Config(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            num_hidden_layers=config.n_layers,
            state_size=config.d_state,
            conv_kernel=config.d_conv,
            expand=config.expand,
            head_dim=config.head_dim,
            num_heads=config.n_heads,
            n_groups=config.n_groups,
            chunk_size=config.chunk_size,
            layer_norm_epsilon=config.norm_eps,
            tie_word_embeddings=True,
        )
        model = transformers.Mamba2ForCausalLM(hf_config)
    elif config.style == "gpt2":
        hf_config = transformers.GPT2Config(
            vocab_size=config.vocab_size,
            n_embd=config.d_model,
            n_layer=config.n_layers,
            n_head=config.n_heads,
            n_positions=config.num_positions,
            n_inner=config.ff_dim,
            layer_norm_epsilon=config.norm_eps,
            attn_implementation="eager",
        )
        model = transformers.GPT2LMHeadModel(hf_config)
    else:
        hf_config = transformers.LlamaConfig(
            vocab_size=config.vocab_size,
            hidden_size=config.d_model,
            intermediate_size=config.ff_dim,
            num_hidden_layers=config.n_layers,
            num_attention_heads=config.n_heads,
            num_key_value_heads=config.kv_heads,
            rms_norm_eps=config.norm_eps,
            rope_theta=config.rope_theta,
            tie_word_embeddings=config.tie_embeddings,
            attention_bias=False,
            mlp_bias=False,
            attn_implementation="eager",
        )
        model = transformers.LlamaForCausalLM(hf_config)
    state = {k: torch.from_numpy(v.copy()) for k, v in hf_state_dict(config, params).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    leftover = [k for k in missing if k != "lm_head.weight" and not k.endswith("attn.bias")]
    if leftover or unexpected:
        raise RuntimeError(f"weight copy incomplete: missing {leftover}, unexpected {unexpected}")
    if config.tie_embeddings:
        model.tie_weights()
    return model.eval()


def hf_logits(model, tokens_BxL) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.asarray(tokens_BxL, np.int64))).logits.numpy()


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    rows, records = [], []
    for name, (config, target) in CASES.items():
        params = models.init(config, jax.random.key(0))
        tokens = jax.random.randint(
            jax.random.key(1), (args.batch, args.seq_len), 0, config.vocab_size, jnp.int32
        )
        forward = jax.jit(functools.partial(models.apply, config))
        ours = time_fn(forward, params, tokens, repeats=args.repeats)
        record = {
            "model": name,
            "config": str(config),
            "batch": args.batch,
            "seq_len": args.seq_len,
            "ours_compile_s": ours.compile_s,
            "ours_median_s": ours.median_s,
            "target_speedup": target,
        }
        if have_torch:
            model = hf_model(config, params)
            theirs = time_host(hf_logits, model, tokens, repeats=args.repeats)
            diff = float(
                np.max(np.abs(hf_logits(model, tokens) - np.asarray(forward(params, tokens))))
            )
            record.update(
                torch_median_s=theirs.median_s,
                speedup=theirs.median_s / ours.median_s,
                max_abs_logit_diff=diff,
            )
            rows.append(
                [
                    name,
                    ours.compile_s,
                    ours.median_s,
                    theirs.median_s,
                    f"{theirs.median_s / ours.median_s:.1f}x",
                    f">= {target:g}x",
                    f"{diff:.1e}",
                ]
            )
        else:
            rows.append([name, ours.compile_s, ours.median_s, "-", "-", f">= {target:g}x", "-"])
        records.append(record)

    print(f"forward pass, batch {args.batch} x {args.seq_len} tokens, {jax.devices()[0].platform}")
    print_table(
        ["model", "ours compile s", "ours s", "torch s", "speedup", "target", "max |dlogit|"],
        rows,
    )
    if not have_torch:
        print(
            "PyTorch baseline not installed: pip install -e '.[bench]' "
            "(torch==2.13.0 + transformers) to time it side by side"
        )
    if args.json:
        print(f"wrote {write_json(args.json, records)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
