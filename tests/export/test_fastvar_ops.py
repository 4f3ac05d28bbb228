import math

import numpy as np
import pytest
import torch

from fastvar.export.fastvar import gather_tokens, pivotal_scores, select_pivotal
from fastvar.plugins.restore import area_upsample, restore_reference


def _area_by_hand(grid: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Adaptive average pooling written out: each output cell averages its input window."""
    hc, wc = grid.shape[:2]
    out = np.zeros((out_h, out_w) + grid.shape[2:])
    for i in range(out_h):
        r0, r1 = (i * hc) // out_h, math.ceil((i + 1) * hc / out_h)
        for j in range(out_w):
            c0, c1 = (j * wc) // out_w, math.ceil((j + 1) * wc / out_w)
            out[i, j] = grid[r0:r1, c0:c1].mean(axis=(0, 1))
    return out


def test_pts_hand_computed():
    # one row, 4 tokens, 2 channels; mean = (1, 1); squared distances 2, 0, 8, 2
    x = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]])
    assert pivotal_scores(x).tolist() == [[2.0, 0.0, 8.0, 2.0]]
    idx = select_pivotal(x, 3)
    assert idx.tolist() == [[2, 0, 3]]  # score descending, the tie 0/3 by index ascending
    assert gather_tokens(x, idx)[0].tolist() == [[3.0, 3.0], [0.0, 0.0], [0.0, 0.0]]


def test_selection_is_per_row_and_breaks_ties_by_index():
    x = torch.zeros(2, 8, 3)
    x[0, [5, 1, 6]] = 1.0  # equal scores at 1, 5, 6
    x[1, 7] = 2.0
    x[1, 2] = 1.0
    idx = select_pivotal(x, 3)
    assert idx[0].tolist() == [1, 5, 6]
    assert idx[1].tolist()[:2] == [7, 2]


def test_area_upsample_non_dividing_24_to_40():
    g = torch.Generator().manual_seed(0)
    cache = torch.randn(2, 24 * 24, 5, generator=g, dtype=torch.float64)
    up = area_upsample(cache, (24, 24), (40, 40))
    ref = np.stack([_area_by_hand(c.reshape(24, 24, 5).numpy(), 40, 40) for c in cache])
    assert np.allclose(up.reshape(2, 40, 40, 5).numpy(), ref, atol=1e-12)
    # 24 -> 40 mixes one-tap and two-tap cells: output row 1 averages input rows 0 and 1
    assert torch.allclose(up.reshape(2, 40, 40, 5)[0, 1, 0], cache.reshape(2, 24, 24, 5)[0, :2, 0].mean(0))


def test_restore_scatters_kept_over_upsampled_cache():
    cache = torch.arange(4 * 3, dtype=torch.float32).reshape(1, 4, 3)  # 2x2 map
    kept = torch.full((1, 2, 3), -1.0)
    idx = torch.tensor([[15, 0]])
    out = restore_reference(kept, idx, cache, (2, 2), (4, 4))
    up = area_upsample(cache, (2, 2), (4, 4))
    assert out.shape == (1, 16, 3)
    assert torch.equal(out[0, [0, 15]], kept[0])
    others = [i for i in range(16) if i not in (0, 15)]
    assert torch.equal(out[0, others], up[0, others])
    # 2 -> 4 is nearest-like: cell (1, 2) takes input (0, 1)
    assert torch.equal(out[0, 1 * 4 + 2], cache[0, 1])


def test_restore_keeps_cache_dtype_and_checks_shapes():
    cache = torch.randn(1, 9, 4).bfloat16()
    out = restore_reference(torch.randn(1, 2, 4), torch.tensor([[0, 3]]), cache, (3, 3), (5, 5))
    assert out.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="implies"):
        area_upsample(torch.randn(1, 8, 4), (3, 3), (5, 5))
    with pytest.raises(ValueError, match="disagree"):
        restore_reference(torch.randn(1, 2, 4), torch.tensor([[0, 3, 4]]), cache, (3, 3), (5, 5))


def test_planted_ties_at_scale_keep_lowest_indices():
    # thousands of equal scores: an unstable sort may return any of them; the rule fixes index order
    g = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 4096, 4)
    far = torch.randperm(4096, generator=g)[:1000]  # the minority lies far from the mean
    x[:, far] = 1.0
    idx = select_pivotal(x, 800)
    expect = torch.sort(far).values[:800]
    assert torch.equal(idx[0], expect) and torch.equal(idx[1], expect)
