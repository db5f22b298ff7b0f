"""Deprecated location of ``ClusterPseudoLabeler``: import it from :mod:`tpsnet_plugin.clustering`."""

import warnings

_MOVED = ("ClusterPseudoLabeler", "ClusterResult")


def __getattr__(name: str):
    if name in _MOVED:
        warnings.warn(
            f"tpsnet_plugin.samplers.cluster_pseudo_labeler.{name} is deprecated: "
            "import it from tpsnet_plugin.clustering",
            DeprecationWarning,
            stacklevel=2,
        )
        from .. import clustering

        return getattr(clustering, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
