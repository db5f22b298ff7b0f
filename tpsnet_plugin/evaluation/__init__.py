"""Cross-domain retrieval evaluation with the metrics of prior UCDIR work."""

from .accuracy_calculator import UCDIRAccuracyCalculator
from .cross_domain import cross_domain_retrieval, evaluate_domains, format_table, mean_metrics
from .pseudo_label_metrics import pseudo_label_scores

__all__ = [
    "UCDIRAccuracyCalculator",
    "cross_domain_retrieval",
    "evaluate_domains",
    "format_table",
    "mean_metrics",
    "pseudo_label_scores",
]
