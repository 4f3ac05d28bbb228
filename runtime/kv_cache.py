"""A KV cache allocated once per image, sequence-major, so every step's past is one contiguous prefix.

Each block owns k and v buffers of shape (S_i, B2, H, hd). A step reads ``[0, P_i)`` and writes its new
entries into ``[P_i, P_i + L_i)``: both are contiguous views of one allocation (a slice along S of a
(B, H, S, hd) buffer is not, once B*H > 1). Under FastVAR a pruned block gains only its kept tokens
per pruned step (in selection order), so S_i differs between pruned and unpruned blocks. The last
executed step's entries are never read, so they are neither allocated nor written.
"""

from __future__ import annotations

import torch

from fastvar.export.kv_layout import block_cache_lengths
from fastvar.export.schedules import PrunePlan


class KVCache:
    def __init__(self, plan: PrunePlan, depth: int, rows: int, heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> None:
        self.capacity = block_cache_lengths(plan, depth)
        self.k = [torch.empty((n, rows, heads, head_dim), dtype=dtype, device=device) for n in self.capacity]
        self.v = [torch.empty((n, rows, heads, head_dim), dtype=dtype, device=device) for n in self.capacity]
        self.length = [0] * depth

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (*self.k, *self.v))

    def past(self, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.length[block]
        return self.k[block][:n], self.v[block][:n]

    def reserve(self, block: int, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The contiguous slices [P, P + n) where a step writes its new entries in place."""
        start = self.length[block]
        if start + n > self.capacity[block]:
            raise RuntimeError(f"block {block}: writing {n} entries at {start} overflows its {self.capacity[block]}")
        return self.k[block][start:start + n], self.v[block][start:start + n]

    def commit(self, block: int, n: int) -> None:
        """The reserved slice now holds the step's entries: they become part of the past."""
        self.length[block] += n

    def write(self, block: int, k_new: torch.Tensor, v_new: torch.Tensor) -> None:
        """Copy a step's entries into its slice (backends that cannot write in place)."""
        k, v = self.reserve(block, k_new.shape[0])
        k.copy_(k_new)
        v.copy_(v_new)
        self.commit(block, k_new.shape[0])
