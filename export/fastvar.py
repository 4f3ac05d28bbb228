"""FastVAR's two primitives, shared by every model family: pivotal-token selection and restoration.

Selection (PTS) scores each token of the pre-norm residual by its squared L2 distance to the spatial
mean of its batch row and keeps the K highest. Upstream uses an unstable argsort, which leaves the order
of equal scores undefined; we fix one rule everywhere: score descending, ties by index ascending.
Restoration (CTR) is the FastVARRestore op (``fastvar.plugins.restore``).
"""

from __future__ import annotations

import torch

from fastvar.plugins.restore import restore_reference


def pivotal_scores(x: torch.Tensor) -> torch.Tensor:
    """(B, L, C) -> (B, L): squared distance of every token to its row's mean token, in float32."""
    x = x.float()
    mean = x.mean(dim=1, keepdim=True)
    return (x - mean).pow(2).sum(dim=-1)


def select_pivotal(x: torch.Tensor, k: int) -> torch.Tensor:
    """Kept token indices (B, K), int64, in selection order (score descending, ties by index)."""
    scores = pivotal_scores(x)
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices
    return order[:, :k]


def select_pivotal_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """The graph spelling of ``select_pivotal``: one TopK (ONNX orders equal values by lower index first,
    which is our tie rule; TensorRT's TopK takes k <= 3840, checked at export)."""
    return torch.topk(pivotal_scores(x), k, dim=1, largest=True, sorted=True).indices


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(B, L, C) gathered at (B, K) -> (B, K, C)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def restore(kept: torch.Tensor, idx: torch.Tensor, cache: torch.Tensor, cache_hw: tuple[int, int],
            out_hw: tuple[int, int]) -> torch.Tensor:
    """Full token map of one sub-layer's output from its K computed tokens and the cached map."""
    return restore_reference(kept, idx, cache, cache_hw, out_hw)
