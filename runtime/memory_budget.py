"""The memory a run of an artifact will hold, per backend and device, and whether this machine has it.

A run holds its weights for its whole life; the loop adds the KV cache, the restore caches, the
conditioning and one graph's working memory at a time (no session keeps an arena at its own peak); before
the decoder runs the loop's state is freed, so the decoder's working memory replaces it instead of adding
to it. The peak is therefore

    runtime + weights + graph constants + max(loop state + largest loop graph's working memory,
                                              largest decoder working memory)

per instance for the per-image parts. ``fastvar-run`` plans from the artifact itself (the weight store's
size, the graphs' outputs, each graph's working memory from ``fastvar.graph_memory``) and refuses, before
loading anything, a plan that the memory available does not hold; ``fastvar-export --plan`` prints the same
plan from the formula estimates of ``export.memory_plan``, before any graph exists.

Where each part lives depends on the backend: on ONNX Runtime's CPU provider and the torch reference on a
CPU everything is host memory; on a GPU (ONNX Runtime's CUDA provider, TensorRT) the weights, the loop state
and the working memory are device memory, and the host holds the runtime and what loading stages through
it (one weight tensor at a time, and for TensorRT one engine file).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fastvar import graph_names as gn
from fastvar.export.graphs import TORCH_DTYPES
from fastvar.export.memory_plan import GIB, find_item, largest_items

# Host memory of the process besides weights and run state: Python, torch, ONNX Runtime and this package,
# libraries' file pages, and the sessions' graph structures, which grow with the graphs' node count. Measured
# with /proc/self/status after loading, on our 2-core CPU machine (torch 2.13 CPU, onnxruntime 1.32), less the
# weight store and the graph constants: 0.30 GiB for infinity-2b depth 2 at 1024 (3,504 nodes), 0.32 for
# infinity-tiny (6,219), 1.00 for infinity-2b at full depth (44,108): 0.24 GiB + 18 KB per node. The GPU
# figure adds the CUDA context and the kernels' images on the host: an estimate until measured on a GPU.
RUNTIME_HOST = {"cpu": int(0.24 * GIB), "cuda": int(1.5 * GIB)}
RUNTIME_PER_NODE = 18_000
# What ONNX Runtime's CPU kernels allocate beyond the tensors alive at once (internal temporaries, allocator
# slack), over the working memory with every state value made first (graph_memory.stream_last): measured
# 1.25x on infinity-2b at 1024 (step 10: 3.14 GiB against 2.50), 1.08x (step 9), 1.16x and 1.24x at depth 2;
# 1.00x on the VAE decoder, so loop graphs only.
KERNEL_SLACK = 0.3

BACKEND_DEVICES = {"onnxruntime": ("cpu", "cuda"), "tensorrt": ("cuda",), "torch": ("cpu", "cuda")}
# The non-finite check and the uint8 conversion of the decoded image: 36 MiB measured at 1024x1024, batch 1
IMAGE_COPIES = 3


class DoesNotFit(ValueError):
    """A plan larger than the memory available to the run."""


@dataclass(frozen=True)
class PlanItem:
    name: str
    bytes: int
    phase: str  # run: held for the whole run; loop: freed before the decoder; decode: the decoder's only
    note: str


@dataclass
class RunPlan:
    """One memory (host or device) of one run: items by phase, and the peak they add up to."""

    where: str  # "host memory" or "GPU memory"
    label: str  # model, geometry, backend and device
    items: list[PlanItem] = field(default_factory=list)
    instances: int = 1

    def phase_bytes(self, phase: str) -> int:
        return sum(it.bytes for it in self.items if it.phase == phase)

    @property
    def peak(self) -> int:
        return self.phase_bytes("run") + max(self.phase_bytes("loop"), self.phase_bytes("decode"))

    @property
    def peak_phase(self) -> str:
        return "loop" if self.phase_bytes("loop") >= self.phase_bytes("decode") else "decode"

    def item(self, name: str) -> PlanItem:
        return find_item(self.items, name)

    def table(self) -> str:
        w = max(len("peak"), *(len(it.name) for it in self.items))
        head = f"{'item':<{w}}  {'phase':<6}  {'GiB':>7}  note"
        rule = "-" * len(head)
        lines = [f"{self.where} plan: {self.label}", head, rule]
        lines += [f"{it.name:<{w}}  {it.phase:<6}  {it.bytes / GIB:>7.3f}  {it.note}" for it in self.items]
        lines.append(rule)
        loop, dec = self.phase_bytes("loop") / GIB, self.phase_bytes("decode") / GIB
        lines.append(f"{'peak':<{w}}  {'':<6}  {self.peak / GIB:>7.3f}  run items + the larger phase (loop "
                     f"{loop:.3f}, decode {dec:.3f}): the {self.peak_phase}")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"where": self.where, "label": self.label, "instances": self.instances, "peak_bytes": self.peak,
                "peak_phase": self.peak_phase,
                "items": [{"name": it.name, "bytes": it.bytes, "phase": it.phase, "note": it.note}
                          for it in self.items]}

    def check_fits(self, available: int, source: str) -> None:
        """Refuse a plan larger than ``available`` bytes, naming the shortfall and the largest items."""
        if self.peak <= available:
            return
        names = largest_items(self.items)
        raise DoesNotFit(
            f"{self.label} needs {self.peak / GIB:.2f} GiB of {self.where} at its peak (the {self.peak_phase}) but "
            f"{available / GIB:.2f} GiB is available ({source}): short by {(self.peak - available) / GIB:.2f} GiB. "
            f"Largest items: {names}. Free memory, run on a larger machine or a smaller artifact (resolution, "
            "batch, --schedule fastvar), or give --max-memory GiB if the figure above is wrong for this machine")


@dataclass(frozen=True)
class Figures:
    """What a plan needs to know of an artifact, from its files or, before export, from formulas."""

    label: str
    weights: int  # bytes of the weight store (or the parameters a backend loads)
    constants: int  # graph-held weights and folded constants, all sessions together
    kv: int
    caches: int
    conditioning: int
    loop_working: int
    loop_note: str  # where the loop's working memory peaks, and how it was found
    decode_working: int
    decode_note: str
    sessions: int
    nodes: int  # of every graph a run opens (0 before export: not known yet)
    image: int  # bytes of the decoded batch in fp32 (what the checks and the uint8 conversion copy)
    largest_tensor: int  # what loading stages through the host at once on a GPU
    largest_engine: int = 0  # TensorRT: the largest engine file, read whole to deserialize


def _tensor_bytes(rec) -> int:
    n = TORCH_DTYPES[rec.dtype].itemsize
    for d in rec.shape:
        n *= d
    return n


def artifact_figures(art, backend: str = "onnxruntime") -> Figures:
    """The plan's figures of an exported artifact: its weight store, its graphs' outputs and working memory (for
    ONNX Runtime with every state value made first, the most its schedulers hold; else in the files' order)."""
    import onnx

    from fastvar.export.weight_store import read_header
    from fastvar.graph_memory import graph_memory, stream_last

    header = read_header(art.weight_path())
    header.pop("__data_start__")
    sizes = [v["data_offsets"][1] - v["data_offsets"][0] for v in header.values()]
    kv = caches = cond = image = 0
    constants = 0
    loop, loop_at, dec, dec_at = 0, "", 0, ""  # the largest working memory of each phase, and where
    nodes = 0
    names = art.run_graphs()
    for name in names:
        rec = art.graph(name)
        for out in rec.outputs:
            if gn.new_kv_block(out.name) is not None:
                kv += _tensor_bytes(out)
            elif gn.is_cache(out.name):
                caches += _tensor_bytes(out)
            elif rec.kind == "condition":
                cond += _tensor_bytes(out)
            elif out.name == gn.IMAGE:
                image = _tensor_bytes(out)
        model = onnx.load(str(art.graph_path(name)), load_external_data=False)
        nodes += len(model.graph.node)
        if backend == "onnxruntime":  # every state value made first and held: the most its schedulers hold
            model = stream_last(model, gn.STREAM_INPUTS)
        mem = graph_memory(model, name, bound=lambda n: gn.new_kv_block(n) is not None or gn.is_cache(n))
        del model
        constants += mem.resident
        if rec.kind == "decoder":
            if mem.working > dec:
                dec, dec_at = mem.working, f"{name} ({mem.peak_node})"
        elif mem.working > loop:
            loop, loop_at = mem.working, f"{name} ({mem.peak_node})"
    engines = [e.bytes or 0 for e in art.manifest.engines.values()]
    m = art.manifest
    h, w = m.pixels
    return Figures(label=f"{m.model.name} {h}x{w} b{m.batch} {m.precision} {m.schedule.spec}", weights=sum(sizes),
                   constants=constants, kv=kv, caches=caches, conditioning=cond, loop_working=loop,
                   loop_note=f"the largest loop graph, {loop_at}: tensors alive at once"
                   + (", state work first (the most ONNX Runtime holds)" if backend == "onnxruntime" else ""),
                   decode_working=dec, decode_note=f"{dec_at}, with the image it writes", sessions=len(names),
                   nodes=nodes, image=image, largest_tensor=max(sizes, default=0),
                   largest_engine=max(engines, default=0))


def formula_figures(mem) -> Figures:
    """The plan's figures before export, from ``export.memory_plan``'s device plan (its formula estimates)."""
    by = {it.name: it.bytes for it in mem.items}
    weights = sum(by.get(n, 0) for n in ("transformer weights", "tokenizer weights"))
    return Figures(label=mem.label, weights=weights, constants=by.get("VAE decoder weights", 0),
                   kv=by.get("KV cache", 0),
                   caches=by.get("FastVAR restore caches", 0) + by.get("restore caches", 0),
                   conditioning=by.get("conditioning", 0) + by.get("f_hat", 0),
                   loop_working=by.get("peak step activations", 0),
                   loop_note="formula estimate of the largest step (export.memory_plan)",
                   decode_working=by.get("VAE decode activations", 0),
                   decode_note="formula estimate of the VAE decoder (export.memory_plan)", sessions=0, nodes=0,
                   image=mem.batch * 3 * mem.pixels[0] * mem.pixels[1] * 4, largest_tensor=0)


def plan_run(fig: Figures, backend: str, device: str, instances: int = 1) -> tuple[RunPlan, RunPlan | None]:
    """(host plan, GPU plan or None) of running an artifact with ``backend`` on ``device``, ``instances``
    generations at once sharing one copy of the weights (a server's instances)."""
    if device not in BACKEND_DEVICES.get(backend, ()):
        raise ValueError(f"no memory plan for backend {backend!r} on {device!r}; accepted: "
                         + ", ".join(f"{b} on {'/'.join(d)}" for b, d in BACKEND_DEVICES.items()))
    if instances < 1:
        raise ValueError(f"instances must be >= 1, got {instances}")
    per = f" x {instances} instances" if instances > 1 else ""
    slack = int(KERNEL_SLACK * fig.loop_working) if backend == "onnxruntime" else 0
    state = [
        PlanItem("KV cache", instances * fig.kv, "loop", f"every step's new K/V{per}; freed before the decoder"),
        PlanItem("restore caches", instances * fig.caches, "loop", f"FastVAR's cached maps{per}"),
        PlanItem("conditioning", instances * fig.conditioning, "loop", f"the conditioning graph's outputs{per}"),
        PlanItem("loop working memory", instances * fig.loop_working, "loop", fig.loop_note + per),
    ]
    if slack:
        state.append(PlanItem("kernel temporaries", instances * slack, "loop",
                              f"ONNX Runtime's kernels beyond the tensors alive: {KERNEL_SLACK:g} x the loop "
                              f"working memory (measured){per}"))
    state.append(PlanItem("decoder working memory", instances * fig.decode_working, "decode", fig.decode_note + per))
    state.append(PlanItem("image checks", instances * IMAGE_COPIES * fig.image, "decode",
                          f"{IMAGE_COPIES} fp32 copies of the image: the non-finite check, the uint8 conversion{per}"))
    weights = [
        PlanItem("weights", fig.weights, "run", "the weight store, loaded once and bound by every graph"),
        PlanItem("text encoder", 0, "run", "none in this artifact: the run takes text-encoder states (embeddings), "
                 "the encoder runs elsewhere"),
        PlanItem("graph constants", fig.constants, "run", f"initializers and load-time folded constants of "
                 f"{fig.sessions or 'all'} graph sessions (the VAE decoder's weights)"),
    ]
    label = f"{fig.label}, {backend} on {device}" + (f", {instances} instances" if instances > 1 else "")
    runtime = RUNTIME_HOST[device] + RUNTIME_PER_NODE * fig.nodes
    what = "Python, torch, the runtime" + (f"; {fig.sessions} sessions of {fig.nodes:,} nodes" if fig.nodes else
                                            "; the sessions are counted once the graphs exist (fastvar-run --plan)")
    if device == "cuda":
        what += "; the CUDA context (estimate)"
    host = RunPlan("host memory", label, [PlanItem("runtime", runtime, "run", what)], instances)
    if device == "cpu":
        host.items += weights + state
        return host, None
    staged = fig.largest_tensor + (fig.largest_engine if backend == "tensorrt" else 0)
    host.items.append(PlanItem("load staging", staged, "run", "one weight tensor at a time" +
                               (" and one engine file" if backend == "tensorrt" else "") + " on its way to the GPU"))
    gpu = RunPlan("GPU memory", label, weights + state, instances)
    return host, gpu


def plan_for_artifact(art, backend: str, device: str, instances: int = 1) -> tuple[RunPlan, RunPlan | None]:
    return plan_run(artifact_figures(art, backend), backend, device, instances)


# ---- what this machine has ------------------------------------------------------------------------

def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        v = int(text)
    except ValueError:
        return None
    return v if 0 <= v < 2**62 else None  # cgroup v1 writes ~2^63 for "no limit"


def _stat_value(path: Path, key: str) -> int:
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if k == key and v.strip().isdigit():
                return int(v)
    except OSError:
        pass
    return 0


def _cgroup_dirs(proc: Path, root: Path) -> list[tuple[Path, int]]:
    """(memory cgroup directory, version) of this process and each ancestor, innermost first."""
    out: list[tuple[Path, int]] = []
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hid, controllers, rel = parts
        if hid == "0" and controllers == "":
            base, version = root / "unified" if (root / "unified").is_dir() else root, 2
        elif "memory" in controllers.split(","):
            base, version = root / "memory", 1
        else:
            continue
        rel_parts = [p for p in rel.split("/") if p and p not in (".", "..")]
        for depth in range(len(rel_parts), -1, -1):
            d = base.joinpath(*rel_parts[:depth])
            if d.is_dir():
                out.append((d, version))
    return out


def cgroup_headroom(proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """The tightest memory cgroup limit over this process's cgroup and its ancestors, minus what the cgroup
    uses that it cannot reclaim (its usage less inactive file pages, as container runtimes count a working
    set); None where no limit applies."""
    best: tuple[int, str] | None = None
    for d, version in _cgroup_dirs(proc, root):
        if version == 2:
            limit, usage = _read_int(d / "memory.max"), _read_int(d / "memory.current")
            inactive = _stat_value(d / "memory.stat", "inactive_file")
        else:
            limit, usage = _read_int(d / "memory.limit_in_bytes"), _read_int(d / "memory.usage_in_bytes")
            inactive = _stat_value(d / "memory.stat", "total_inactive_file")
        if limit is None or usage is None:
            continue
        free = max(0, limit - max(0, usage - inactive))
        if best is None or free < best[0]:
            best = (free, f"cgroup limit {limit / GIB:.2f} GiB at {d} less {max(0, usage - inactive) / GIB:.2f} GiB "
                          "in use")
    return best


def mem_available(proc: Path = Path("/proc")) -> int | None:
    """MemAvailable of /proc/meminfo: what the kernel can give without swapping."""
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def available_host_memory(proc: Path = Path("/proc"), root: Path = Path("/sys/fs/cgroup")) -> tuple[int, str] | None:
    """The host memory a new run may use, and where the figure comes from: the smaller of the cgroup's headroom
    and MemAvailable (a cgroup limit can exceed the machine). None where neither can be read (not Linux)."""
    found = []
    if (cg := cgroup_headroom(proc, root)) is not None:
        found.append(cg)
    if (avail := mem_available(proc)) is not None:
        found.append((avail, f"MemAvailable {avail / GIB:.2f} GiB in {proc / 'meminfo'}"))
    return min(found) if found else None


def available_gpu_memory() -> tuple[int, str] | None:
    """Free memory of the current CUDA device, as the driver reports it; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = torch.cuda.mem_get_info()
    return free, f"{free / GIB:.2f} GiB free of {total / GIB:.2f} GiB on {torch.cuda.get_device_name()}"


def check_run_memory(host: RunPlan, gpu: RunPlan | None, max_memory_gib: float | None = None) -> list[str]:
    """Refuse (``DoesNotFit``) a plan this machine cannot hold; returns the lines that say what was checked.
    ``max_memory_gib`` replaces the detected host figure."""
    lines = []
    if max_memory_gib is not None:
        avail = (int(max_memory_gib * GIB), f"--max-memory {max_memory_gib:g}")
    else:
        avail = available_host_memory()
    if avail is None:
        lines.append(f"host memory: planned peak {host.peak / GIB:.2f} GiB; available memory unknown here, not checked")
    else:
        host.check_fits(*avail)
        lines.append(f"host memory: planned peak {host.peak / GIB:.2f} GiB ({host.peak_phase}), "
                     f"{avail[0] / GIB:.2f} GiB available ({avail[1]})")
    if gpu is not None:
        g = available_gpu_memory()
        if g is None:
            lines.append(f"GPU memory: planned peak {gpu.peak / GIB:.2f} GiB; no CUDA device to check against")
        else:
            gpu.check_fits(*g)
            lines.append(f"GPU memory: planned peak {gpu.peak / GIB:.2f} GiB ({gpu.peak_phase}), {g[1]}")
    return lines
