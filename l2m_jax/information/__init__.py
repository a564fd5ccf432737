"""Information estimators: pure functions over arrays (nats throughout)."""

from l2m_jax.information.bipartite import (
    BipartiteResult,
    DataProcessingBound,
    DocumentScores,
    EntropyByContext,
    ExponentFit,
    PositionLogprobs,
    ScoringPlan,
    bipartite_estimates,
    bipartite_mi,
    document_scores,
    ngram_entropy,
    score_documents,
    scoring_plan,
    two_point_bound,
)
from l2m_jax.information.counting import CountTable, PairCounts, count_ngrams, count_pairs
from l2m_jax.information.entropy import EntropyEstimate, entropy
from l2m_jax.information.fits import (
    BootstrapInterval,
    HilbergFit,
    PowerLawFit,
    bootstrap_hilberg,
    bootstrap_power_law,
    fit_hilberg,
    fit_power_law,
)
from l2m_jax.information.gaussian import gaussian_mi
from l2m_jax.information.two_point import TwoPointResult, two_point_mi, two_point_mi_from_counts

__all__ = [
    "BipartiteResult",
    "BootstrapInterval",
    "CountTable",
    "DataProcessingBound",
    "DocumentScores",
    "EntropyByContext",
    "EntropyEstimate",
    "ExponentFit",
    "HilbergFit",
    "PairCounts",
    "PositionLogprobs",
    "PowerLawFit",
    "ScoringPlan",
    "TwoPointResult",
    "bipartite_estimates",
    "bipartite_mi",
    "bootstrap_hilberg",
    "bootstrap_power_law",
    "count_ngrams",
    "count_pairs",
    "document_scores",
    "entropy",
    "fit_hilberg",
    "fit_power_law",
    "gaussian_mi",
    "ngram_entropy",
    "score_documents",
    "scoring_plan",
    "two_point_bound",
    "two_point_mi",
    "two_point_mi_from_counts",
]
