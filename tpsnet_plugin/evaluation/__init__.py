"""Cross-domain retrieval evaluation with the metrics of prior UCDIR work."""

from .accuracy_calculator import UCDIRAccuracyCalculator
from .average_precision import average_precisions
from .baseline import raw_pixel_features
from .cross_domain import cross_domain_retrieval, evaluate_domains, format_table, mean_metrics
from .knn import top_k
from .pseudo_label_metrics import pseudo_label_scores, relabel_precision

__all__ = [
    "UCDIRAccuracyCalculator",
    "average_precisions",
    "cross_domain_retrieval",
    "evaluate_domains",
    "format_table",
    "mean_metrics",
    "pseudo_label_scores",
    "relabel_precision",
    "raw_pixel_features",
    "top_k",
]
