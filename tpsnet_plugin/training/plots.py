"""Figures people look at after a run: retrieval grids and a t-SNE of the embeddings."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402


def _show(axis, image: torch.Tensor, border: str | None = None) -> None:
    array = image.permute(1, 2, 0).numpy()
    axis.imshow(array.squeeze(), cmap="gray" if array.shape[-1] == 1 else None)
    axis.set_xticks([])
    axis.set_yticks([])
    if border:
        for spine in axis.spines.values():
            spine.set_edgecolor(border)
            spine.set_linewidth(3)


def retrieval_grid(
    query_images: torch.Tensor,
    query_labels: np.ndarray,
    gallery_images: torch.Tensor,
    gallery_labels: np.ndarray,
    ranked: np.ndarray,
    path: str | Path,
    title: str = "",
) -> None:
    """Save a grid: one row per query, its top-k gallery images framed green (same class) or red.

    Args:
        query_images: Q×C×H×W floats in [0, 1].
        query_labels: True class per query (Q,).
        gallery_images: The gallery images, indexed by ``ranked``.
        gallery_labels: True class per gallery image.
        ranked: Q×k gallery indices, best first.
        path: Output PNG path.
        title: Figure title.
    """
    rows, k = ranked.shape
    figure, axes = plt.subplots(rows, k + 1, figsize=(1.2 * (k + 1), 1.2 * rows), squeeze=False)
    for row in range(rows):
        _show(axes[row, 0], query_images[row], border="black")
        for col, index in enumerate(ranked[row], start=1):
            correct = gallery_labels[index] == query_labels[row]
            _show(axes[row, col], gallery_images[index], border="green" if correct else "red")
    axes[0, 0].set_title("query", fontsize=8)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)


def tsne_plot(
    embeddings: np.ndarray,
    labels: np.ndarray,
    domains: np.ndarray,
    domain_names: Sequence[str],
    path: str | Path,
    seed: int = 0,
) -> None:
    """Save a 2-D t-SNE of ``embeddings``: colour = class, marker = domain."""
    from sklearn.manifold import TSNE

    tsne = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, len(embeddings) - 1))
    points = tsne.fit_transform(embeddings)
    markers = "os^vDP*X"
    figure, axis = plt.subplots(figsize=(7, 6))
    for d, name in enumerate(domain_names):
        mask = domains == d
        axis.scatter(points[mask, 0], points[mask, 1], c=labels[mask], cmap="tab20", s=8,
                     marker=markers[d % len(markers)], label=name, vmin=labels.min(), vmax=labels.max())
    axis.legend(markerscale=2)
    axis.set_title("t-SNE of retrieval embeddings (colour: class, marker: domain)")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)


def save_run_plots(features: torch.Tensor, data, output_dir: str | Path, seed: int = 0, tsne_max_points: int = 2000,
                   queries: int = 8, topk: int = 8) -> list[Path]:
    """Write ``retrieval_<A>_to_<B>.png`` for every direction (with cached images) and ``tsne.png``.

    Args:
        features: The retrieval features of every image (N×e, dataset order, L2-normalised).
        data: The run's :class:`~tpsnet_plugin.training.builder.RunData` (domains, true labels, images, names).
        output_dir: Where the images go.
        seed: Seed of the query and t-SNE samples.
        tsne_max_points: Most points in the t-SNE (``eval.tsne_max_points``).
        queries: Queries per retrieval grid.
        topk: Retrieved images per query.
    """
    domains, labels, images = data.domains.numpy(), data.true_labels, data.images
    rng = np.random.default_rng(seed)
    out = Path(output_dir)
    written = []
    for a, name_a in enumerate(data.domain_names):
        for b, name_b in enumerate(data.domain_names):
            if a == b or images is None:
                continue
            query_index = rng.choice(np.flatnonzero(domains == a), size=queries, replace=False)
            gallery_index = np.flatnonzero(domains == b)
            scores = features[query_index] @ features[gallery_index].T
            ranked = scores.topk(topk, dim=1).indices.numpy()
            path = out / f"retrieval_{name_a}_to_{name_b}.png".replace(" ", "_")
            retrieval_grid(
                images[query_index].float() / 255, labels[query_index],
                images[gallery_index].float() / 255, labels[gallery_index], ranked, path,
                title=f"{name_a} -> {name_b} (green: same class)",
            )
            written.append(path)
    chosen = rng.choice(len(features), size=min(tsne_max_points, len(features)), replace=False)
    tsne_plot(features[chosen].numpy(), labels[chosen], domains[chosen], data.domain_names, out / "tsne.png")
    written.append(out / "tsne.png")
    return written
