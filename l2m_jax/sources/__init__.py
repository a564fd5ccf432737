"""Where sequences come from: ground-truth families with exact information, and corpora."""

from l2m_jax.sources.discrete import (
    CopySource,
    HiddenMarkov,
    MarkovChain,
    copy_source,
    hidden_markov,
    markov_chain,
)
from l2m_jax.sources.gaussian import GaussianFamily, log_gaussian, subvolume_gaussian
from l2m_jax.sources.text import (
    chunk_documents,
    chunk_spans,
    load_corpus,
    read_documents,
    shard_for_host,
)
from l2m_jax.sources.tokenize import Tokenizer, get_tokenizer, train_bpe

__all__ = [
    "CopySource",
    "GaussianFamily",
    "HiddenMarkov",
    "MarkovChain",
    "Tokenizer",
    "chunk_documents",
    "chunk_spans",
    "copy_source",
    "get_tokenizer",
    "hidden_markov",
    "load_corpus",
    "log_gaussian",
    "markov_chain",
    "read_documents",
    "shard_for_host",
    "subvolume_gaussian",
    "train_bpe",
]
