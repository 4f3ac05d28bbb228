import torch

from fastvar.runtime.sampling import bit_probabilities, draw_noise, sample_bits


def _upstream_filter(logits: torch.Tensor, top_p: float = 0.97) -> torch.Tensor:
    """Upstream's top-p step on (N, 2) pairs, written out: sort, cumsum, drop mass <= 1 - top_p."""
    sorted_logits, sorted_idx = logits.sort(dim=-1, descending=False)
    remove = sorted_logits.softmax(dim=-1).cumsum(dim=-1) <= (1 - top_p)
    remove[..., -1:] = False
    mask = remove.scatter(1, sorted_idx, remove)
    return logits.masked_fill(mask, -torch.inf).softmax(dim=-1)[:, 1]


def test_probabilities_match_upstream_filter():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 50, 64, generator=g) * 4
    ours = bit_probabilities(logits)
    ref = _upstream_filter(logits.reshape(-1, 2)).reshape(3, 50, 32)
    assert torch.equal(ours, ref)
    assert ((ours == 0) | (ours == 1)).any() and ((ours > 0) & (ours < 1)).any()


def test_threshold_edges():
    # p1 = sigmoid(l1 - l0): a gap of -4 gives p1 ~ 0.018 (dropped), -3 gives ~ 0.047 (kept)
    logits = torch.tensor([[[0.0, -4.0, 0.0, -3.0, 4.0, 0.0, 0.0, 0.0]]])
    p = bit_probabilities(logits)[0, 0]
    assert p[0] == 0 and 0.04 < p[1] < 0.05 and p[2] == 0 and p[3] == 0.5
    noise = torch.tensor([[[0.0, 0.01, 0.9, 0.49]]])
    assert sample_bits(logits, noise).tolist() == [[[0, 1, 0, 1]]]


def test_noise_is_seeded_and_schedule_independent():
    a = draw_noise(0, [1, 4, 16], 2, 8)
    b = draw_noise(0, [1, 4, 16], 2, 8)
    c = draw_noise(1, [1, 4, 16], 2, 8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=False))
    assert not torch.equal(a[2], c[2])
    assert [t.shape for t in a] == [(2, 1, 8), (2, 4, 8), (2, 16, 8)]
