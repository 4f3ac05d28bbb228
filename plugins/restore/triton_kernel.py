"""FastVARRestore as Triton kernels: area-upsample the cached map, then scatter the kept rows over it.

Bit-exact with ``restore_reference`` by construction: each output sums its area window in PyTorch's
order (window rows outer, columns inner) in float32, divides once by the window size with IEEE division
(``div_rn``: Triton's ``/`` compiles to an approximate division on GPUs, while the interpreter is exact),
and rounds once to the cache's dtype; the scatter copies kept rows unchanged. Two launches on one stream
(area for every position, then the kept rows), so no position is ever written by two programs at once.

``fused_kernel`` does both in one launch (each program finds which of its positions are kept), the form
an ahead-of-time TensorRT plugin needs, since it embeds exactly one kernel. Runs on a CUDA device, or on
the CPU under ``TRITON_INTERPRET=1`` (how CI proves it). ``compile_ptx`` produces the PTX for a GPU
target without a GPU (Triton's ahead-of-time path).
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
def _windows(p, hc, wc, h, w):
    """Area window of output position(s) p on the (h, w) grid over the (hc, wc) cache: rows [sh, eh),
    columns [sw, ew), with PyTorch's floor/ceil bounds."""
    oh = p // w
    ow = p % w
    return (oh * hc) // h, ((oh + 1) * hc + h - 1) // h, (ow * wc) // w, ((ow + 1) * wc + w - 1) // w


@triton.jit
def area_kernel(cache_ptr, out_ptr, C, hc, wc, h, w, BLOCK: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr):
    """Program (b * h * w + p, c-block): out[b, p, c] = mean of cache over p's area window.

    KH x KW bounds every window (static loops; cells past a window's end add an exact 0.0, which leaves
    the sum and its order unchanged)."""
    row = tl.program_id(0)
    cb = tl.program_id(1)
    b = row // (h * w)
    p = row % (h * w)
    sh, eh, sw, ew = _windows(p, hc, wc, h, w)
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


@triton.jit
def _restored_tile(kept_ptr, idx_ptr, cache_ptr, K, C, hc, wc, h, w, BLOCK_P: tl.constexpr, BLOCK_K: tl.constexpr,
                   BLOCK_C: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr, K_TILES: tl.constexpr):
    """This program's (BLOCK_P, BLOCK_C) tile of the restored map, in the cache's dtype, with the flat offsets
    of its elements in a (B, h*w, C) tensor and their mask. Program (b * position-blocks + pb, c-block): find
    which positions of the block are kept by comparing them with every kept index (K <= 3840 compares per
    position, cheap next to the memory traffic), then take the kept row or the area value. Same sums, order
    and rounding as area_kernel."""
    row = tl.program_id(0)
    cb = tl.program_id(1)
    n_pb = tl.cdiv(h * w, BLOCK_P)
    b = row // n_pb
    pos = (row % n_pb) * BLOCK_P + tl.arange(0, BLOCK_P)
    valid = pos < h * w
    slot = tl.zeros((BLOCK_P,), dtype=tl.int32) - 1
    for t in range(K_TILES):  # a compile-time trip count (Triton 3.6's interpreter cannot loop to a runtime bound)
        ks = t * BLOCK_K + tl.arange(0, BLOCK_K)
        idx = tl.load(idx_ptr + b.to(tl.int64) * K + ks, mask=ks < K, other=-1).to(tl.int32)
        hit = pos[:, None] == idx[None, :]
        slot = tl.maximum(slot, tl.max(tl.where(hit, ks[None, :], -1), axis=1))
    sh, eh, sw, ew = _windows(pos, hc, wc, h, w)
    cols = cb * BLOCK_C + tl.arange(0, BLOCK_C)
    cmask = cols < C
    base = cache_ptr + b.to(tl.int64) * hc * wc * C
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32)
    for dh in tl.static_range(KH):
        for dw in tl.static_range(KW):
            ih = sh + dh
            iw = sw + dw
            inside = valid & (ih < eh) & (iw < ew)
            ptrs = base + ((ih * wc + iw).to(tl.int64) * C)[:, None] + cols[None, :]
            acc += tl.load(ptrs, mask=inside[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    count = ((eh - sh) * (ew - sw)).to(tl.float32)
    area = tl.math.div_rn(acc, count[:, None] + tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.float32))
    dtype = cache_ptr.dtype.element_ty
    if dtype == tl.bfloat16:
        area = _round_bf16(area)
    is_kept = slot >= 0
    kept_ptrs = kept_ptr + (b.to(tl.int64) * K + tl.maximum(slot, 0).to(tl.int64))[:, None] * C + cols[None, :]
    kept_val = tl.load(kept_ptrs, mask=(is_kept & valid)[:, None] & cmask[None, :], other=0.0)
    val = tl.where(is_kept[:, None], kept_val.to(dtype), area.to(dtype))
    offsets = (b.to(tl.int64) * h * w + pos)[:, None] * C + cols[None, :]
    return val, offsets, valid[:, None] & cmask[None, :]


@triton.jit
def fused_kernel(kept_ptr, idx_ptr, cache_ptr, K, C, hc, wc, h, w, out_ptr, BLOCK_P: tl.constexpr,
                 BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                 K_TILES: tl.constexpr):
    """One launch, one write per output element (what an ahead-of-time TensorRT plugin needs: a single
    kernel). Parameters are in the order a TensorRT AOT plugin launch passes them: inputs, scalars,
    outputs. Only the window bounds KH/KW and K_TILES >= ceil(K / BLOCK_K) are compiled in; K and C are
    runtime scalars."""
    val, offsets, mask = _restored_tile(kept_ptr, idx_ptr, cache_ptr, K, C, hc, wc, h, w, BLOCK_P, BLOCK_K,
                                        BLOCK_C, KH, KW, K_TILES)
    tl.store(out_ptr + offsets, val.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def fused_add_kernel(res_ptr, kept_ptr, idx_ptr, cache_ptr, K, C, hc, wc, h, w, out_ptr, BLOCK_P: tl.constexpr,
                     BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr, KH: tl.constexpr, KW: tl.constexpr,
                     K_TILES: tl.constexpr):
    """``out = residual + restore(...)`` in one pass (FastVARRestoreAdd): the restored value, rounded to the
    cache's dtype, is widened to the residual's dtype and added there, as torch's type promotion does. The
    restored map is never written."""
    val, offsets, mask = _restored_tile(kept_ptr, idx_ptr, cache_ptr, K, C, hc, wc, h, w, BLOCK_P, BLOCK_K,
                                        BLOCK_C, KH, KW, K_TILES)
    dtype = out_ptr.dtype.element_ty
    total = tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32) + val.to(tl.float32)
    if dtype == tl.bfloat16:  # one rounding of the exact fp32 sum, to nearest even (as torch and GPUs do)
        total = _round_bf16(total)
    tl.store(out_ptr + offsets, total.to(dtype), mask=mask)


FUSED_BLOCKS = {"BLOCK_P": 16, "BLOCK_K": 64, "BLOCK_C": 64}


def restore_triton_fused(kept: torch.Tensor, kept_idx: torch.Tensor, cache: torch.Tensor,
                         cache_hw: tuple[int, int], out_hw: tuple[int, int],
                         out: torch.Tensor | None = None) -> torch.Tensor:
    """The single-launch form (the plugin's AOT kernel); same result as ``restore_triton``."""
    b, lc, c = cache.shape
    (hc, wc), (h, w) = cache_hw, out_hw
    if lc != hc * wc or kept.shape[:2] != kept_idx.shape or kept.shape[2] != c:
        raise ValueError(f"shapes disagree: kept {tuple(kept.shape)}, kept_idx {tuple(kept_idx.shape)}, "
                         f"cache {tuple(cache.shape)} for grid {cache_hw}")
    if out is None:
        out = torch.empty((b, h * w, c), dtype=cache.dtype, device=cache.device)
    k = kept.shape[1]
    grid = (b * triton.cdiv(h * w, FUSED_BLOCKS["BLOCK_P"]), triton.cdiv(c, FUSED_BLOCKS["BLOCK_C"]))
    fused_kernel[grid](kept.to(cache.dtype).contiguous(), kept_idx.contiguous(), cache.contiguous(), k, c,
                       hc, wc, h, w, out, KH=max_window(hc, h), KW=max_window(wc, w),
                       K_TILES=triton.cdiv(k, FUSED_BLOCKS["BLOCK_K"]), **FUSED_BLOCKS)
    return out


def restore_add_triton_fused(residual: torch.Tensor, kept: torch.Tensor, kept_idx: torch.Tensor,
                             cache: torch.Tensor, cache_hw: tuple[int, int], out_hw: tuple[int, int],
                             out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + restore(...)`` in one launch (the FastVARRestoreAdd plugin's kernel); ``out`` may alias
    ``residual`` (each element is read before it is written, by the same program)."""
    b, lc, c = cache.shape
    (hc, wc), (h, w) = cache_hw, out_hw
    if lc != hc * wc or kept.shape[:2] != kept_idx.shape or kept.shape[2] != c or residual.shape != (b, h * w, c):
        raise ValueError(f"shapes disagree: residual {tuple(residual.shape)}, kept {tuple(kept.shape)}, kept_idx "
                         f"{tuple(kept_idx.shape)}, cache {tuple(cache.shape)} for grids {cache_hw} -> {out_hw}")
    dtype = torch.promote_types(residual.dtype, cache.dtype)
    residual = residual.to(dtype).contiguous()
    if out is None:
        out = torch.empty_like(residual)
    k = kept.shape[1]
    grid = (b * triton.cdiv(h * w, FUSED_BLOCKS["BLOCK_P"]), triton.cdiv(c, FUSED_BLOCKS["BLOCK_C"]))
    fused_add_kernel[grid](residual, kept.to(cache.dtype).contiguous(), kept_idx.contiguous(), cache.contiguous(), k,
                           c, hc, wc, h, w, out, KH=max_window(hc, h), KW=max_window(wc, w),
                           K_TILES=triton.cdiv(k, FUSED_BLOCKS["BLOCK_K"]), **FUSED_BLOCKS)
    return out


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
INDEX_SIGNATURES = {"int64": "*i64", "int32": "*i32"}
FUSED_ARGS = ("kept_ptr", "idx_ptr", "cache_ptr", "K", "C", "hc", "wc", "h", "w", "out_ptr")


def _source(fn, constexprs: dict[str, int], signature: dict[str, str]):
    from triton.compiler import ASTSource

    return ASTSource(fn=fn, constexprs=constexprs, signature={**signature, **dict.fromkeys(constexprs, "constexpr")})


def compile_fused(cache_hw: tuple[int, int], out_hw: tuple[int, int], dtype: str = "float32", arch: int = 90,
                  index_dtype: str = "int64", max_kept: int | None = None, residual_dtype: str | None = None):
    """The fused kernel compiled ahead of time for ``sm_{arch}`` (no GPU needed): Triton's compiled kernel,
    with ``asm["ptx"]`` and ``metadata`` (name, num_warps, shared). One compile serves any B and C, and any
    K up to ``max_kept`` (default: every position, out_h * out_w). With ``residual_dtype``: the fused-add
    kernel (FastVARRestoreAdd), whose residual and output have that dtype."""
    from triton.backends.compiler import GPUTarget

    if dtype not in SIGNATURES or index_dtype not in INDEX_SIGNATURES or (residual_dtype or dtype) not in SIGNATURES:
        raise ValueError(f"FastVARRestore kernel: dtype {dtype!r} / index dtype {index_dtype!r} not supported; "
                         f"accepted: {', '.join(SIGNATURES)} / {', '.join(INDEX_SIGNATURES)}")
    ptr = SIGNATURES[dtype]
    kh, kw = max_window(cache_hw[0], out_hw[0]), max_window(cache_hw[1], out_hw[1])
    types = dict(zip(FUSED_ARGS, (ptr, INDEX_SIGNATURES[index_dtype], ptr, *["i32"] * 6, ptr), strict=True))
    fn = fused_kernel
    if residual_dtype is not None:
        fn = fused_add_kernel
        types = {"res_ptr": SIGNATURES[residual_dtype], **types, "out_ptr": SIGNATURES[residual_dtype]}
    tiles = triton.cdiv(max_kept or out_hw[0] * out_hw[1], FUSED_BLOCKS["BLOCK_K"])
    src = _source(fn, {**FUSED_BLOCKS, "KH": kh, "KW": kw, "K_TILES": tiles}, types)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32))


def compile_ptx(cache_hw: tuple[int, int], out_hw: tuple[int, int], dtype: str = "float32", arch: int = 90,
                index_dtype: str = "int64") -> dict[str, str]:
    """PTX of the three kernels for ``sm_{arch}`` and one grid pair (the window bounds are compiled in), made
    without a GPU: Triton's compiler targets any architecture."""
    from triton.backends.compiler import GPUTarget

    ptr = SIGNATURES[dtype]
    target = GPUTarget("cuda", arch, 32)
    kh, kw = max_window(cache_hw[0], out_hw[0]), max_window(cache_hw[1], out_hw[1])
    area = _source(area_kernel, {"BLOCK": BLOCK_C, "KH": kh, "KW": kw},
                   {"cache_ptr": ptr, "out_ptr": ptr, "C": "i32", "hc": "i32", "wc": "i32", "h": "i32", "w": "i32"})
    scatter = _source(scatter_kernel, {"BLOCK": BLOCK_C},
                      {"kept_ptr": ptr, "idx_ptr": INDEX_SIGNATURES[index_dtype], "out_ptr": ptr, "K": "i32",
                       "C": "i32", "L": "i32"})
    out = {name: triton.compile(src, target=target).asm["ptx"] for name, src in (("area", area), ("scatter", scatter))}
    out["fused"] = compile_fused(cache_hw, out_hw, dtype, arch, index_dtype).asm["ptx"]
    return out
