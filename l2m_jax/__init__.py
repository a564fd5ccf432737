"""l2m_jax: mutual-information scaling of sequences and the memory models need to carry it.

Subpackages (imported on first use, so `import l2m_jax` stays cheap):
  information  estimators: entropy, two-point MI, bipartite MI, Gaussian MI, power-law fits
  sources      ground truth: hierarchical Gaussian families, discrete sources, text corpora
  models       transformer (GPT-2 / Llama styles) and Mamba / Mamba-2, history-state sizes
  train        optax training, exact-KL losses, position-wise metrics, orbax checkpoints
"""

import importlib

__version__ = "0.1.0"
__all__ = ["information", "models", "sources", "train"]


def __getattr__(name):
    if name in __all__:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
