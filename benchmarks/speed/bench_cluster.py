"""Clustering and instance-loss speed: ours vs scikit-learn KMeans and pml's SelfSupervisedLoss.

Part 1, clustering 50k x 512 features with 65 planted clusters (noise sigma 2.5 around random unit
means), k = 65, 20 iterations, 5 restarts:

- ``ClusterPseudoLabeler`` (faiss) on one domain of 50k, and on two domains of 25k each (the second
  domain shifted; anchored clustering, Hungarian-aligned ids);
- scikit-learn ``KMeans(65, n_init=5, max_iter=20, tol=0)`` (Lloyd) on the same preprocessed
  features (L2-normalised, per-domain mean-centred, normalised again, as the labeler does), one
  run per domain for the two-domain case.
  NMI against the planted labels (for two domains: our NMI over both domains uses the aligned ids;
  scikit-learn's per-domain ids are not aligned, so its per-domain NMI is reported).

Part 2, ``InstanceContrastiveLoss(temperature=0.1)`` vs pml ``SelfSupervisedLoss(NTXentLoss(0.1))``
at batch 64/256/1024, e = 128: forward + backward, values and gradients compared. pml builds a
(2B positives x 4B^2 negatives) tensor, so at batch 1024 it runs in a subprocess with an
address-space limit and a time limit, and is reported as skipped when it exceeds either.
Run: ``HF_HUB_OFFLINE=1 .venv/bin/python -m benchmarks.speed.bench_cluster [--quick] [--out FILE]``.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

import tpsnet_plugin  # noqa: E402,F401

# isort: split
from pytorch_metric_learning.losses import NTXentLoss, SelfSupervisedLoss
from sklearn.cluster import KMeans
from sklearn.metrics import normalized_mutual_info_score

from benchmarks._common import format_table, measure, parse_args, write_json
from tpsnet_plugin.clustering import ClusterPseudoLabeler
from tpsnet_plugin.losses import InstanceContrastiveLoss

K = 65
NITER = 20
NREDO = 5
TEMPERATURE = 0.1
EMB = 128
PML_SUBPROCESS_BATCH = 1024
PML_MEMORY_LIMIT_GIB = 12
PML_TIME_LIMIT_S = 180
ROOT = Path(__file__).resolve().parents[2]


def planted(n: int, dim: int, num_domains: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    means = rng.standard_normal((K, dim)).astype(np.float32)
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    labels = rng.integers(0, K, n)
    domains = np.repeat(np.arange(num_domains), n // num_domains)
    shifts = rng.standard_normal((num_domains, dim)).astype(np.float32) * 0.5 / dim**0.5
    x = means[labels] + 2.5 * rng.standard_normal((n, dim)).astype(np.float32) / dim**0.5
    return (x + shifts[domains]).astype(np.float32), labels, domains


def preprocess(x, domains):
    """The labeler's input transform: normalise, subtract each domain's mean, normalise."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    for d in np.unique(domains):
        x[domains == d] -= x[domains == d].mean(0)
    return np.ascontiguousarray(x / np.linalg.norm(x, axis=1, keepdims=True))


def sklearn_kmeans(x, domains):
    labels = np.empty(len(x), dtype=np.int64)
    for d in np.unique(domains):
        idx = domains == d
        labels[idx] = KMeans(K, n_init=NREDO, max_iter=NITER, tol=0.0, random_state=0,
                             algorithm="lloyd").fit(x[idx]).labels_
    return labels


def clustering_part(n: int, dim: int, repeats: int):
    rows, results = [], {}
    for num_domains in (1, 2):
        x, labels, domains = planted(n, dim, num_domains)
        pre = preprocess(x.copy(), domains)
        name = f"{num_domains} domain(s) x {n // num_domains}"

        def ours(x=x, domains=domains, labels=labels):
            return ClusterPseudoLabeler(K, niter=NITER, nredo=NREDO, seed=0).fit(
                x, domains, true_labels=labels)

        m_ours = measure(ours, repeats, warmup=1)
        res = m_ours.pop("value")
        m_ours.update(nmi=res.nmi, nmi_per_domain=res.nmi_per_domain,
                      matching_cost=res.matching_cost)
        m_sk = measure(lambda pre=pre, domains=domains: sklearn_kmeans(pre, domains), repeats, warmup=0)
        sk_labels = m_sk.pop("value")
        m_sk["nmi_per_domain"] = [float(normalized_mutual_info_score(labels[domains == d],
                                                                      sk_labels[domains == d]))
                                  for d in range(num_domains)]
        m_sk["nmi"] = (float(normalized_mutual_info_score(labels, sk_labels))
                       if num_domains == 1 else None)
        speedup = m_sk["median_s"] / m_ours["median_s"]
        results[name] = {"ours": m_ours, "sklearn": m_sk, "sklearn_over_ours": speedup}
        for label, m in (("ClusterPseudoLabeler (faiss)", m_ours), ("sklearn KMeans", m_sk)):
            rows.append([name, label, m["repeats"], m["median_s"], m["extra_peak_mib"], m["nmi"],
                         " ".join(f"{v:.4f}" for v in m["nmi_per_domain"]),
                         speedup if m is m_ours else None])
    return rows, results


def _views(batch: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, EMB, generator=gen), torch.randn(batch, EMB, generator=gen))


def _fwd_bwd(loss_fn, batch: int):
    a, b = (v.requires_grad_() for v in _views(batch))
    loss = loss_fn(a, ref_emb=b) if isinstance(loss_fn, InstanceContrastiveLoss) else loss_fn(a, b)
    loss.backward()
    return loss.detach(), a.grad, b.grad


def pml_loss():
    return SelfSupervisedLoss(NTXentLoss(temperature=TEMPERATURE))


def pml_case(batch: int) -> None:
    """Subprocess entry: one pml forward+backward, printed as JSON (limits set by the parent)."""
    import time

    from benchmarks._common import PeakRSS

    with PeakRSS() as rss:
        start = time.perf_counter()
        _fwd_bwd(pml_loss(), batch)
        seconds = time.perf_counter() - start
    print(json.dumps({"median_s": seconds, "extra_peak_mib": rss.extra_mib, "repeats": 1}))


def _limit_memory() -> None:
    limit = PML_MEMORY_LIMIT_GIB * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))


def pml_in_subprocess(batch: int) -> dict:
    # run as a module from the repository root, so that ``benchmarks`` imports as it does here
    cmd = [sys.executable, "-m", __spec__.name, "--pml-case", str(batch)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=PML_TIME_LIMIT_S, cwd=ROOT,
                              preexec_fn=_limit_memory, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        return {"skipped": f"timeout: over {PML_TIME_LIMIT_S} s for one call"}
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
        return {"skipped": f"OOM under a {PML_MEMORY_LIMIT_GIB} GiB address-space limit: {last}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def loss_part(batches, repeats: int):
    rows, results = [], {}
    ours_fn = InstanceContrastiveLoss(temperature=TEMPERATURE)
    for batch in batches:
        m_ours = measure(lambda batch=batch: _fwd_bwd(ours_fn, batch), repeats, warmup=1)
        ours_value = m_ours.pop("value")
        entry = {"ours": m_ours}
        if batch >= PML_SUBPROCESS_BATCH:
            m_pml = pml_in_subprocess(batch)
            entry["values_equal"] = None
        else:
            m_pml = measure(lambda batch=batch: _fwd_bwd(pml_loss(), batch), 1 if batch >= 256 else repeats,
                            warmup=0 if batch >= 256 else 1)
            pml_value = m_pml.pop("value")
            ok = all(torch.allclose(o, p, rtol=1e-4, atol=1e-6)
                     for o, p in zip(ours_value, pml_value))
            assert ok, f"batch {batch}: InstanceContrastiveLoss != pml (loss/gradients differ)"
            entry["values_equal"] = ok
            entry["loss"] = [float(ours_value[0]), float(pml_value[0])]
        entry["pml"] = m_pml
        entry["pml_over_ours"] = (m_pml["median_s"] / m_ours["median_s"]
                                  if "median_s" in m_pml else None)
        results[str(batch)] = entry
        rows.append([batch, "InstanceContrastiveLoss", m_ours["repeats"], m_ours["median_s"],
                     m_ours["extra_peak_mib"], entry["pml_over_ours"], entry["values_equal"]])
        rows.append([batch, "pml SelfSupervisedLoss(NTXent)", m_pml.get("repeats"),
                     m_pml.get("median_s", m_pml.get("skipped", "").split(":")[0] + " (skipped)"),
                     m_pml.get("extra_peak_mib"),
                     None, entry["values_equal"]])
    return rows, results


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--pml-case":
        pml_case(int(sys.argv[2]))
        return
    args = parse_args("bench_cluster", __doc__.splitlines()[0])
    n, dim, repeats, batches = ((2000, 64, 1, (16, 64)) if args.quick
                                else (50_000, 512, 3, (64, 256, 1024)))
    c_rows, c_results = clustering_part(n, dim, repeats)
    c_headers = ["data", "method", "runs", "median s", "extra peak MiB", "NMI (all)",
                 "NMI per domain", "sklearn/ours"]
    print(format_table(c_headers, c_rows))
    l_rows, l_results = loss_part(batches, 5 if not args.quick else 2)
    l_headers = ["batch", "loss (fwd+bwd, e=128)", "runs", "median s", "extra peak MiB",
                 "pml/ours", "equal"]
    print()
    print(format_table(l_headers, l_rows))
    write_json(args.out, {
        "benchmark": "bench_cluster",
        "quick": args.quick,
        "setup": {"n": n, "dim": dim, "k": K, "niter": NITER, "nredo": NREDO,
                  "temperature": TEMPERATURE, "emb": EMB,
                  "timing": "median of 'runs' timed runs (clustering: 1 warm-up for ours, none "
                            "for sklearn; pml at batch >= 256: one run)",
                  "memory": "extra peak RSS, background sampler (benchmarks/_common.py)",
                  "pml_limits": {"batch_from": PML_SUBPROCESS_BATCH,
                                 "address_space_gib": PML_MEMORY_LIMIT_GIB,
                                 "time_s": PML_TIME_LIMIT_S}},
        "clustering": {"headers": c_headers, "rows": c_rows, "results": c_results},
        "instance_loss": {"headers": l_headers, "rows": l_rows, "results": l_results},
    })


if __name__ == "__main__":
    main()
