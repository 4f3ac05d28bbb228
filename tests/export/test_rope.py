import math

import torch

from fastvar.export.models.rope import apply_rope, rope_freqs_grid, rope_table, scale_positions


def test_star_positions_of_square_scales():
    assert scale_positions(6, 64).tolist() == [0, 11, 21, 32, 43, 53]
    assert scale_positions(2, 64).tolist() == [0, 32]
    assert scale_positions(12, 64).tolist() == [0, 5, 11, 16, 21, 27, 32, 37, 43, 48, 53, 59]
    assert scale_positions(64, 64).tolist() == list(range(64))


def test_half_to_even_ties():
    # template 3.0: final 1M grid is 111 x 37; a 2-row scale sits at round(55.5) = 56 (even)
    assert scale_positions(2, 111).tolist() == [0, 56]
    # a 1.5 tie rounds to 2, a 2.5 tie to 2: both even
    assert torch.tensor([1.5, 2.5]).round().tolist() == [2.0, 2.0]


def test_table_holds_y_then_x_angles():
    hd = 16
    t = rope_table(hd, (6, 6), (64, 64))
    assert t.shape == (2, 36, hd // 2)
    inv = [1.0 / 10000 ** (2 * i / (hd // 2)) for i in range(hd // 4)]
    row, col = 11, 53  # token (1, 5) of the 6x6 scale
    tok = 1 * 6 + 5
    expect = [row * f for f in inv] + [col * f for f in inv]
    assert torch.allclose(t[0, tok], torch.tensor([math.cos(a) for a in expect]), atol=1e-6)
    assert torch.allclose(t[1, tok], torch.tensor([math.sin(a) for a in expect]), atol=1e-6)


def test_rotation_pairs_adjacent_channels():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 36, 16, generator=g)
    table = rope_table(16, (6, 6), (64, 64), rope_freqs_grid(16))
    y = apply_rope(x, table)
    z = torch.view_as_complex(x.reshape(2, 3, 36, 8, 2).contiguous())
    rot = torch.complex(table[0], table[1])
    ref = torch.view_as_real(z * rot).reshape(x.shape)
    assert torch.allclose(y, ref, atol=1e-6)
    assert torch.allclose(y.norm(dim=-1), x.norm(dim=-1), atol=1e-5)
