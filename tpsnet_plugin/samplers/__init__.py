"""Batch sampler that follows the pseudo-labels.

``ClusterPseudoLabeler`` and ``ClusterResult`` moved to :mod:`tpsnet_plugin.clustering`; importing
them from here still works for one release, with a ``DeprecationWarning``.
"""

import warnings

from .pseudo_label_sampler import PseudoLabelSampler

__all__ = ["PseudoLabelSampler"]

_MOVED = ("ClusterPseudoLabeler", "ClusterResult")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"tpsnet_plugin.samplers.{name} is deprecated: import it from tpsnet_plugin.clustering",
            DeprecationWarning,
            stacklevel=2,
        )
        from .. import clustering

        return getattr(clustering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
