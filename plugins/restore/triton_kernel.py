"""FastVARRestore as Triton kernels: area-upsample the cached map, then scatter the kept rows over it.

Bit-exact with ``restore_reference`` by construction: each output sums its area window in PyTorch's
order (window rows outer, columns inner) in float32, divides once by the window size with IEEE division
(``div_rn``: Triton's ``/`` compiles to an approximate division on GPUs, while the interpreter is exact),
and rounds once to the cache's dtype; the scatter copies kept rows unchanged. Two launches on one stream
(area for every position, then the kept rows), so no position is ever written by two programs at once.

Runs on a CUDA device, or on the CPU under ``TRITON_INTERPRET=1`` (how CI proves it). ``compile_ptx``
produces the PTX for a GPU target without a GPU (Triton's ahead-of-time path).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_C = 128


@triton.jit
def _round_bf16(x):
    """float32 -> the float32 value of its round-to-nearest-even bf16. GPUs convert this way; Triton's
    interpreter truncates, so the kernel rounds explicitly and the cast that follows is exact everywhere
    (finite inputs: a NaN's payload is not preserved)."""
    u = x.to(tl.uint32, bitcast=True)
    u = (u + (((u >> 16) & 1) + 0x7FFF)) & 0xFFFF0000
    return u.to(tl.float32, bitcast=True)


@triton.jit
def area_kernel(cache_ptr, out_ptr, C, hc, wc, h, w, BLOCK: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr):
    """Program (b * h * w + p, c-block): out[b, p, c] = mean of cache over p's area window.

    KH x KW bounds every window (static loops; cells past a window's end add an exact 0.0, which leaves
    the sum and its order unchanged)."""
    row = tl.program_id(0)
    cb = tl.program_id(1)
    b = row // (h * w)
    p = row % (h * w)
    oh = p // w
    ow = p % w
    sh = (oh * hc) // h
    eh = ((oh + 1) * hc + h - 1) // h
    sw = (ow * wc) // w
    ew = ((ow + 1) * wc + w - 1) // w
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    mask = cols < C
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    base = cache_ptr + b.to(tl.int64) * hc * wc * C
    for dh in tl.static_range(KH):
        for dw in tl.static_range(KW):
            ih = sh + dh
            iw = sw + dw
            inside = (ih < eh) & (iw < ew)
            acc += tl.load(base + (ih * wc + iw).to(tl.int64) * C + cols, mask=mask & inside,
                           other=0.0).to(tl.float32)
    count = ((eh - sh) * (ew - sw)).to(tl.float32)
    val = tl.math.div_rn(acc, tl.zeros((BLOCK,), dtype=tl.float32) + count)
    if out_ptr.dtype.element_ty == tl.bfloat16:
        val = _round_bf16(val)
    tl.store(out_ptr + row.to(tl.int64) * C + cols, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def scatter_kernel(kept_ptr, idx_ptr, out_ptr, K, C, L, BLOCK: tl.constexpr):
    """Program (b * K + k, c-block): out[b, idx[b, k], c] = kept[b, k, c]."""
    row = tl.program_id(0)
    cb = tl.program_id(1)
    b = row // K
    p = tl.load(idx_ptr + row).to(tl.int64)
    cols = cb * BLOCK + tl.arange(0, BLOCK)
    mask = cols < C
    v = tl.load(kept_ptr + row.to(tl.int64) * C + cols, mask=mask)
    tl.store(out_ptr + (b.to(tl.int64) * L + p) * C + cols, v.to(out_ptr.dtype.element_ty), mask=mask)


def max_window(n_in: int, n_out: int) -> int:
    """The largest area window along one axis: ceil((i+1)*n_in/n_out) - floor(i*n_in/n_out) over i."""
    return max(-((-(i + 1) * n_in) // n_out) - (i * n_in) // n_out for i in range(n_out))


def restore_triton(kept: torch.Tensor, kept_idx: torch.Tensor, cache: torch.Tensor, cache_hw: tuple[int, int],
                   out_hw: tuple[int, int], out: torch.Tensor | None = None) -> torch.Tensor:
    """The two launches on the current stream; ``out`` (B, h*w, C) may be given (a plugin's output buffer)."""
    b, lc, c = cache.shape
    (hc, wc), (h, w) = cache_hw, out_hw
    if lc != hc * wc or kept.shape[:2] != kept_idx.shape or kept.shape[2] != c:
        raise ValueError(f"shapes disagree: kept {tuple(kept.shape)}, kept_idx {tuple(kept_idx.shape)}, "
                         f"cache {tuple(cache.shape)} for grid {cache_hw}")
    if out is None:
        out = torch.empty((b, h * w, c), dtype=cache.dtype, device=cache.device)
    cache, kept, idx = cache.contiguous(), kept.to(cache.dtype).contiguous(), kept_idx.contiguous()
    blocks = triton.cdiv(c, BLOCK_C)
    kh, kw = max_window(hc, h), max_window(wc, w)
    area_kernel[(b * h * w, blocks)](cache, out, c, hc, wc, h, w, BLOCK=BLOCK_C, KH=kh, KW=kw)
    k = kept.shape[1]
    if k:
        scatter_kernel[(b * k, blocks)](kept, idx, out, k, c, h * w, BLOCK=BLOCK_C)
    return out


SIGNATURES = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}


def compile_ptx(cache_hw: tuple[int, int], out_hw: tuple[int, int], dtype: str = "float32", arch: int = 90,
                index_dtype: str = "int64") -> dict[str, str]:
    """PTX of both kernels for ``sm_{arch}`` and one grid pair (the window bounds are compiled in), made
    without a GPU: Triton's compiler targets any architecture."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr = SIGNATURES[dtype]
    idx = "*i64" if index_dtype == "int64" else "*i32"
    target = GPUTarget("cuda", arch, 32)
    kh, kw = max_window(cache_hw[0], out_hw[0]), max_window(cache_hw[1], out_hw[1])
    area = ASTSource(fn=area_kernel, constexprs={"BLOCK": BLOCK_C, "KH": kh, "KW": kw},
                     signature={"cache_ptr": ptr, "out_ptr": ptr, "C": "i32", "hc": "i32", "wc": "i32", "h": "i32",
                                "w": "i32", "BLOCK": "constexpr", "KH": "constexpr", "KW": "constexpr"})
    scatter = ASTSource(fn=scatter_kernel, constexprs={"BLOCK": BLOCK_C},
                        signature={"kept_ptr": ptr, "idx_ptr": idx, "out_ptr": ptr, "K": "i32", "C": "i32",
                                   "L": "i32", "BLOCK": "constexpr"})
    return {name: triton.compile(src, target=target).asm["ptx"] for name, src in (("area", area),
                                                                                    ("scatter", scatter))}
