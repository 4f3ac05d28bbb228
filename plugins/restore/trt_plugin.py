"""FastVARRestore as a TensorRT Python plugin (``tensorrt.plugin``, "quickly deployable plugin").

Two ops, ``fastvar::FastVARRestore`` and ``fastvar::FastVARRestoreAdd`` (the restore fused with the
residual add that consumes it), version "1": the names, namespace and version the exported ONNX nodes
carry (``plugin_namespace``/``plugin_version``), so TensorRT's ONNX parser finds them through its plugin
fallback. Each has two implementations:

- **AOT** (what ``fastvar-build`` uses): the fused Triton kernel compiled ahead of time to PTX, embedded in
  the plan, so the engine runs without Python (trtexec, C++, CUDA graphs). TensorRT launches it with the
  inputs, then the extra scalars, then the outputs; Triton (3.3 and later) appends hidden scratch pointer
  parameters that such a launch does not pass, so ``aot_kernel`` removes them from the PTX after checking
  the kernel never reads them. Triton is pinned (``triton`` extra): the PTX and its parameter list belong
  to the Triton that made it, and the engine record keeps both the version and the PTX hash.
- **JIT**: the same kernel through Triton's launcher on TensorRT's stream (debugging; needs Python).

The sizes (cache_h, cache_w, out_h, out_w) are node attributes. TensorRT does not serialize attributes
for an AOT plugin, so the window bounds are compiled into the PTX and the sizes passed as scalars; B, K
and C come from the tensors' shape expressions, so one kernel per (dtype, sizes) serves any batch.

This module deliberately has no ``from __future__ import annotations``: ``tensorrt.plugin`` validates the
decorated functions' annotations as real types.
"""

import hashlib
import re
import threading
from dataclasses import dataclass
from functools import lru_cache

from .onnx_op import DOMAIN, OP_TYPE, OP_TYPE_ADD, OP_TYPES, PLUGIN_VERSION

PLUGIN_ID = f"{DOMAIN}::{OP_TYPE}"
PLUGIN_ID_ADD = f"{DOMAIN}::{OP_TYPE_ADD}"
_LOCK = threading.Lock()
_STATE: dict = {}


@dataclass(frozen=True)
class AotKernel:
    """One PTX kernel as TensorRT embeds it."""

    name: str
    ptx: str
    num_warps: int
    shared: int
    arch: int
    hidden_params_removed: int
    triton_version: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.ptx.encode()).hexdigest()

    @property
    def ptx_isa(self) -> str:
        """The PTX ISA version: the driver on the target machine must support it (it JIT-compiles the PTX)."""
        m = re.search(r"^\.version\s+(\S+)", self.ptx, re.M)
        return m.group(1) if m else "unknown"


def strip_hidden_params(ptx: str, name: str, n_args: int) -> tuple[str, int]:
    """Drop the parameters after the first ``n_args`` from kernel ``name``'s entry, refusing when the body
    uses one (then the kernel needs memory TensorRT's launch does not give it)."""
    m = re.search(rf"\.entry\s+{re.escape(name)}\(\s*(.*?)\s*\)", ptx, re.S)
    if m is None:
        raise ValueError(f"PTX has no entry {name!r}")
    params = [p.strip() for p in m.group(1).split(",")]
    if len(params) < n_args:
        raise ValueError(f"{name} takes {len(params)} parameters, the plugin launch passes {n_args}")
    extra = params[n_args:]
    body = ptx[m.end():]
    for p in extra:
        pname = p.split()[-1]
        if re.search(rf"\b{re.escape(pname)}\b", body):
            raise ValueError(f"{name} reads its hidden parameter {pname} (Triton scratch memory); TensorRT's AOT "
                             "launch does not pass it. Pin the Triton release the plugin supports (triton extra)")
    if not extra:
        return ptx, 0
    kept = ",\n\t".join(params[:n_args])
    return ptx[:m.start(1)] + kept + ptx[m.end(1):], len(extra)


@lru_cache(maxsize=64)
def aot_kernel(dtype: str, index_dtype: str, cache_hw: tuple[int, int], out_hw: tuple[int, int],
               arch: int, kept: int | None = None, residual_dtype: str | None = None) -> AotKernel:
    """The fused kernel for one dtype and size pair on ``sm_{arch}``, ready to embed (no GPU needed).
    ``kept``: K when the engine's shapes fix it (a tighter loop); None compiles for any K <= out_h*out_w.
    ``residual_dtype``: FastVARRestoreAdd's kernel (one more input, the residual, first)."""
    triton = require_triton()
    from .triton_kernel import FUSED_ARGS, compile_fused

    compiled = compile_fused(cache_hw, out_hw, dtype, arch, index_dtype, kept, residual_dtype)
    name = compiled.metadata.name
    n_args = len(FUSED_ARGS) + (residual_dtype is not None)
    ptx, removed = strip_hidden_params(compiled.asm["ptx"], name, n_args)
    return AotKernel(name=name, ptx=ptx, num_warps=compiled.metadata.num_warps, shared=compiled.metadata.shared,
                     arch=arch, hidden_params_removed=removed, triton_version=triton.__version__)


def require_triton():
    """The triton module, or a clear error: the plugin's kernel is compiled by Triton (this module itself
    imports without it, so engines that embed the kernel load on machines that lack it)."""
    try:
        import triton
    except ImportError:
        raise ImportError("the FastVARRestore plugin's kernel is compiled by Triton, which is not installed: "
                          "pip install 'fastvar-trt[triton]' (Triton 3.6.0, which the PTX is made with)") from None
    return triton


def launch_grid(batch, positions, channels):
    """(grid_x, grid_y) of the fused kernel; works on ints and on TensorRT shape expressions alike."""
    from .triton_kernel import FUSED_BLOCKS

    p, c = FUSED_BLOCKS["BLOCK_P"], FUSED_BLOCKS["BLOCK_C"]
    return batch * ((positions + p - 1) // p), (channels + c - 1) // c


def registered_arch() -> int | None:
    """The compute capability (x10) the registered AOT implementation compiles for; None before ``register``."""
    return _STATE.get("arch")


def register(arch: int | None = None) -> int:
    """Define the plugin in this process's TensorRT plugin registry (once; later calls check the arch).

    ``arch`` is the target's compute capability times ten (90 for H100); by default the current CUDA
    device's. The ONNX parser then resolves FastVARRestore nodes to it; a JIT engine needs this call
    before deserialization, an AOT engine does not. Returns the arch.
    """
    import tensorrt.plugin as trtp

    with _LOCK:
        if _STATE.get("module") is not trtp:  # another tensorrt.plugin (a reloaded or fake one): define again
            _STATE.clear()
        if arch is None:
            arch = _STATE.get("arch") or _current_arch()
        if "arch" in _STATE:
            if _STATE["arch"] != arch:
                raise ValueError(f"the FastVARRestore plugin is registered for sm_{_STATE['arch']} in this process; "
                                 f"building for sm_{arch} needs a new process")
            return arch
        _define(arch)
        _STATE.update(arch=arch, module=trtp)
        return arch


def _current_arch() -> int:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("no CUDA device: pass the target compute capability (e.g. register(arch=90))")
    major, minor = torch.cuda.get_device_capability()
    return major * 10 + minor


def _dtype_name(trt, dt) -> str:
    names = {trt.float32: "float32", trt.float16: "float16", trt.bfloat16: "bfloat16", trt.int64: "int64",
             trt.int32: "int32"}
    if dt not in names:
        raise TypeError(f"FastVARRestore: tensor type {dt} is not supported; accepted: fp32, fp16, bf16 data, "
                        "int64 or int32 indices")
    return names[dt]


def _define(arch: int) -> None:
    """The decorated functions of both ops. The four sizes are declared as int32 arrays, not ``int``: the
    parser hands every attribute over as a one-element array and ``tensorrt.plugin`` turns an ``int`` one
    into a Python int with ``int(array)``, which NumPy 2.4 refuses; arrays are taken as they come."""
    import numpy as np
    import numpy.typing as npt
    import tensorrt as trt
    import tensorrt.plugin as trtp

    Size = npt.NDArray[np.int32]  # noqa: N806  (a type alias the decorators read)
    Aot = tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]  # noqa: N806

    def launch(residual, kept, kept_idx, cache, sizes) -> Aot:
        cache_h, cache_w, out_h, out_w = (int(a[0]) for a in sizes)
        k = kept.shape_expr[1]
        kernel = aot_kernel(_dtype_name(trt, cache.dtype), _dtype_name(trt, kept_idx.dtype), (cache_h, cache_w),
                            (out_h, out_w), arch, k.constant_value() if k.is_constant else None,
                            None if residual is None else _dtype_name(trt, residual.dtype))
        params = trtp.KernelLaunchParams()
        params.grid_x, params.grid_y = launch_grid(cache.shape_expr[0], out_h * out_w, cache.shape_expr[2])
        params.block_x = kernel.num_warps * 32
        params.shared_mem = kernel.shared
        scalars = (k, cache.shape_expr[2], cache_h, cache_w, out_h, out_w)
        return kernel.name, kernel.ptx, params, trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in scalars])

    def on_stream(stream: int, fn, *tensors) -> None:
        import torch

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            fn(*(torch.as_tensor(t, device="cuda") for t in tensors))

    @trtp.register(PLUGIN_ID)
    def restore_desc(kept: trtp.TensorDesc, kept_idx: trtp.TensorDesc, cache: trtp.TensorDesc, cache_h: Size,
                     cache_w: Size, out_h: Size, out_w: Size) -> trtp.TensorDesc:
        positions = int(out_h[0]) * int(out_w[0])
        return trtp.from_shape_expr((cache.shape_expr[0], positions, cache.shape_expr[2]), dtype=cache.dtype)

    @trtp.aot_impl(PLUGIN_ID)
    def restore_aot(kept: trtp.TensorDesc, kept_idx: trtp.TensorDesc, cache: trtp.TensorDesc, cache_h: Size,
                    cache_w: Size, out_h: Size, out_w: Size, outputs: tuple[trtp.TensorDesc], tactic: int) -> Aot:
        return launch(None, kept, kept_idx, cache, (cache_h, cache_w, out_h, out_w))

    @trtp.impl(PLUGIN_ID)
    def restore_jit(kept: trtp.Tensor, kept_idx: trtp.Tensor, cache: trtp.Tensor, cache_h: Size, cache_w: Size,
                    out_h: Size, out_w: Size, outputs: tuple[trtp.Tensor], stream: int) -> None:
        from .triton_kernel import restore_triton_fused

        hw = ((int(cache_h[0]), int(cache_w[0])), (int(out_h[0]), int(out_w[0])))
        on_stream(stream, lambda k, i, c, o: restore_triton_fused(k, i, c, *hw, out=o), kept, kept_idx, cache,
                  outputs[0])

    @trtp.register(PLUGIN_ID_ADD)
    def restore_add_desc(residual: trtp.TensorDesc, kept: trtp.TensorDesc, kept_idx: trtp.TensorDesc,
                         cache: trtp.TensorDesc, cache_h: Size, cache_w: Size, out_h: Size,
                         out_w: Size) -> trtp.TensorDesc:
        return residual.like()

    @trtp.aot_impl(PLUGIN_ID_ADD)
    def restore_add_aot(residual: trtp.TensorDesc, kept: trtp.TensorDesc, kept_idx: trtp.TensorDesc,
                        cache: trtp.TensorDesc, cache_h: Size, cache_w: Size, out_h: Size, out_w: Size,
                        outputs: tuple[trtp.TensorDesc], tactic: int) -> Aot:
        return launch(residual, kept, kept_idx, cache, (cache_h, cache_w, out_h, out_w))

    @trtp.impl(PLUGIN_ID_ADD)
    def restore_add_jit(residual: trtp.Tensor, kept: trtp.Tensor, kept_idx: trtp.Tensor, cache: trtp.Tensor,
                        cache_h: Size, cache_w: Size, out_h: Size, out_w: Size, outputs: tuple[trtp.Tensor],
                        stream: int) -> None:
        from .triton_kernel import restore_add_triton_fused

        hw = ((int(cache_h[0]), int(cache_w[0])), (int(out_h[0]), int(out_w[0])))
        on_stream(stream, lambda r, k, i, c, o: restore_add_triton_fused(r, k, i, c, *hw, out=o), residual, kept,
                  kept_idx, cache, outputs[0])


def node_kernels(model, arch: int) -> list[AotKernel]:
    """The AOT kernels an engine built from ``model`` (an onnx.ModelProto) embeds: one per distinct
    (op, dtypes, sizes, K) of its FastVARRestore(Add) nodes, from the graph's (static) types and shapes."""
    import onnx

    model = onnx.shape_inference.infer_shapes(model)
    infos = (*model.graph.input, *model.graph.value_info, *model.graph.output)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in infos}
    shapes = {vi.name: vi.type.tensor_type.shape.dim[1].dim_value for vi in infos
              if len(vi.type.tensor_type.shape.dim) == 3 and vi.type.tensor_type.shape.dim[1].HasField("dim_value")}
    names = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.FLOAT16: "float16",
             onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.INT64: "int64", onnx.TensorProto.INT32: "int32"}
    seen = []
    for node in model.graph.node:
        if node.op_type not in OP_TYPES:
            continue
        residual = None
        inputs = list(node.input)
        if node.op_type == OP_TYPE_ADD:
            residual = names.get(types.get(inputs[0], onnx.TensorProto.FLOAT), "float32")
            inputs = inputs[1:]
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        key = (names.get(types.get(inputs[2], onnx.TensorProto.FLOAT), "float32"),
               names.get(types.get(inputs[1], onnx.TensorProto.INT64), "int64"),
               (int(attrs["cache_h"]), int(attrs["cache_w"])), (int(attrs["out_h"]), int(attrs["out_w"])),
               shapes.get(inputs[0]), residual)
        if key not in seen:
            seen.append(key)
    return [aot_kernel(d, i, chw, ohw, arch, k, r) for d, i, chw, ohw, k, r in seen]


def plugin_fingerprint(model, arch: int) -> dict:
    """What an engine record says of its plugin: name, namespace, version and one hash over its kernels'
    PTX ({} when the graph has no FastVARRestore node)."""
    kernels = node_kernels(model, arch)
    if not kernels:
        return {}
    digest = hashlib.sha256("".join(sorted(k.sha256 for k in kernels)).encode()).hexdigest()
    first = kernels[0]
    return {"name": OP_TYPE, "namespace": DOMAIN, "version": PLUGIN_VERSION, "implementation": "aot",
            "ptx_sha256": digest, "kernels": len(kernels), "ptx_isa": first.ptx_isa,
            "hidden_params_removed": first.hidden_params_removed}


__all__ = ["PLUGIN_ID", "PLUGIN_ID_ADD", "AotKernel", "aot_kernel", "launch_grid", "node_kernels",
           "plugin_fingerprint", "register", "registered_arch", "require_triton", "strip_hidden_params"]
