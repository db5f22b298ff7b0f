import pytest
import torch

from tpsnet_plugin.utils import decode_domain_labels, encode_domain_labels


def test_round_trip_matches_definition():
    domains = torch.tensor([0, 0, 1, 2, 2])
    clusters = torch.tensor([0, 4, 3, 1, 4])
    labels = encode_domain_labels(domains, clusters, num_clusters=5)
    assert labels.tolist() == [d * 5 + c for d, c in zip(domains.tolist(), clusters.tolist())]
    back_domains, back_clusters = decode_domain_labels(labels, num_clusters=5)
    assert torch.equal(back_domains, domains) and torch.equal(back_clusters, clusters)


def test_out_of_range_cluster_is_an_error():
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        encode_domain_labels(torch.tensor([0]), torch.tensor([3]), num_clusters=3)
