"""The manifest's records as types, read and checked field by field before anything uses them.

A manifest is untrusted input: every field is checked for presence, type and range, every path for staying
inside the artifact, and the first problem is an ``ArtifactError`` that names the field (``graphs.step_03.
inputs[2].shape``), never a ``KeyError``, a ``TypeError`` or an allocation sized by a hostile number.
Bottom layer: imports nothing from export or runtime.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from fastvar.compat import RECORD_FIELDS, EngineRecord
from fastvar.plan import PrunePlan, StepPlan

MAX_DIM = 1 << 24  # any one tensor dimension
MAX_COUNT = 1 << 16  # graphs, steps, blocks, batch, text tokens and other counts
MAX_BYTES = 1 << 46  # a file's recorded size (64 TiB)
DTYPES = ("float32", "bfloat16", "float16", "bool", "int64", "int32", "uint8")
GRAPH_KINDS = ("condition", "step", "validate", "decoder", "diffusion", "next_input")
PRECISIONS = ("fp32", "bf16")
SEEDS = (-(1 << 63), (1 << 64) - 1)  # what torch.manual_seed takes
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class ManifestError(ValueError):
    """A manifest field that is missing, of the wrong type or out of range (``fastvar.manifest`` re-raises it
    as an ``ArtifactError`` naming the file)."""


class _At:
    """A cursor into the parsed JSON that knows its dotted path, for error messages."""

    def __init__(self, value: Any, where: str) -> None:
        self.value, self.where = value, where

    def _fail(self, what: str) -> ManifestError:
        return ManifestError(f"{self.where or 'the manifest'} {what}")

    def obj(self) -> dict:
        if not isinstance(self.value, dict):
            raise self._fail(f"must be an object, not {type(self.value).__name__}")
        return self.value

    def key(self, name: str, optional: bool = False) -> _At:
        d = self.obj()
        where = f"{self.where}.{name}" if self.where else name
        if name not in d:
            if optional:
                return _At(None, where)
            raise ManifestError(f"{where} is missing")
        return _At(d[name], where)

    def items(self) -> list[tuple[str, _At]]:
        return [(k, _At(v, f"{self.where}.{k}")) for k, v in self.obj().items()]

    def list(self, max_len: int = MAX_COUNT) -> list[_At]:
        if not isinstance(self.value, list):
            raise self._fail(f"must be a list, not {type(self.value).__name__}")
        if len(self.value) > max_len:
            raise self._fail(f"has {len(self.value)} entries; at most {max_len} are accepted")
        return [_At(v, f"{self.where}[{i}]") for i, v in enumerate(self.value)]

    def int(self, lo: int = 0, hi: int = MAX_COUNT, none: bool = False) -> int | None:
        v = self.value
        if v is None and none:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise self._fail(f"must be an integer, not {type(v).__name__}")
        if not lo <= v <= hi:
            raise self._fail(f"is {v}; accepted: {lo}..{hi}")
        return v

    def float(self, lo: float = 0.0, hi: float = 1.0) -> float:
        v = self.value
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise self._fail(f"must be a number in [{lo}, {hi}], got {v!r}")
        return float(v)

    def bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self._fail(f"must be true or false, not {type(self.value).__name__}")
        return self.value

    def str(self, choices: tuple[str, ...] | None = None, none: bool = False) -> str | None:
        v = self.value
        if v is None and none:
            return None
        if not isinstance(v, str):
            raise self._fail(f"must be a string, not {type(v).__name__}")
        if choices is not None and v not in choices:
            raise self._fail(f"is {v!r}; accepted: {', '.join(choices)}")
        return v

    def path(self) -> str:
        """A path inside the artifact: relative, no ``..``, no empty or dot parts."""
        v = self.str()
        p = PurePosixPath(v)
        if not v or p.is_absolute() or "\\" in v or any(part in ("", ".", "..") for part in v.split("/")):
            raise self._fail(f"is {v!r}: a path inside the artifact must be relative, without '..'")
        return v

    def sha256(self) -> str:
        v = self.str()
        if not _SHA256.match(v):
            raise self._fail("must be a sha256 (64 lowercase hex digits)")
        return v


@dataclass(frozen=True)
class FileRecord:
    path: str
    bytes: int
    sha256: str

    @classmethod
    def read(cls, at: _At) -> FileRecord:
        return cls(at.key("path").path(), at.key("bytes").int(0, MAX_BYTES), at.key("sha256").sha256())


@dataclass(frozen=True)
class TensorRecord:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @classmethod
    def read(cls, at: _At) -> TensorRecord:
        shape = tuple(d.int(0, MAX_DIM) for d in at.key("shape").list(8))
        return cls(at.key("name").str(), shape, at.key("dtype").str(DTYPES))


@dataclass(frozen=True)
class GraphRecord:
    name: str
    kind: str
    step: int | None
    inputs: tuple[TensorRecord, ...]
    outputs: tuple[TensorRecord, ...]
    weights: tuple[str, ...]
    key: str
    file: FileRecord
    baked: dict  # choices fixed inside the graph (``export.graphs.GraphDef.baked``), as written

    @classmethod
    def read(cls, name: str, at: _At) -> GraphRecord:
        baked = at.key("baked", optional=True)
        chunks = baked if baked.value is None else baked.key("attention_query_chunks", optional=True)
        for c in chunks.list(4096) if chunks.value is not None else ():
            c.int(1, MAX_DIM, none=True)
        rec = cls(at.key("name").str(), at.key("kind").str(GRAPH_KINDS), at.key("step").int(none=True),
                  tuple(TensorRecord.read(t) for t in at.key("inputs").list()),
                  tuple(TensorRecord.read(t) for t in at.key("outputs").list()),
                  tuple(w.str() for w in at.key("weights").list(1 << 20)), at.key("key").str(),
                  FileRecord.read(at.key("file")), baked.value or {})
        if rec.name != name:
            raise ManifestError(f"{at.where}.name is {rec.name!r}, but the graph is listed as {name!r}")
        return rec


def read_graph(name: str, data: Any) -> GraphRecord:
    """One graph's record from its JSON (``graphs.NAME`` of a manifest), checked like the whole manifest's."""
    return GraphRecord.read(name, _At(data, f"graphs.{name}"))


@dataclass(frozen=True)
class WeightRecord(FileRecord):
    tensors: int

    @classmethod
    def read(cls, at: _At) -> WeightRecord:
        f = FileRecord.read(at)
        return cls(f.path, f.bytes, f.sha256, at.key("tensors").int(0, 1 << 24))


@dataclass(frozen=True)
class EngineFile:
    """An engine ``fastvar-build`` recorded: its plan, the graph it was built from and what built it. Fields an
    older build did not write are None and listed in ``lacks`` (the builder then rebuilds, a run refuses)."""

    path: str
    sha256: str
    graph_key: str
    bytes: int | None
    tensorrt_version: str | None
    compute_capability: str | None
    precision: str | None
    triton_version: str | None
    plugin: dict  # fastvar.plugins.restore.trt_plugin.plugin_fingerprint, as written ({}: no plugin node)
    builder: dict  # {"optimization_level", "flags", ...}, as written
    lacks: tuple[str, ...]

    @classmethod
    def read(cls, at: _At) -> EngineFile:
        plugin, builder = at.key("plugin", optional=True), at.key("builder", optional=True)
        if plugin.value is not None:
            plugin.key("ptx_sha256", optional=True).str(none=True)
            plugin.key("implementation", optional=True).str(none=True)
        if builder.value is not None:
            builder.key("optimization_level", optional=True).int(0, 64, none=True)
            flags = builder.key("flags", optional=True)
            for f in flags.list(64) if flags.value is not None else ():
                f.str()
        return cls(at.key("path").path(), at.key("sha256").sha256(), at.key("graph_key").str(),
                   at.key("bytes", optional=True).int(0, MAX_BYTES, none=True),
                   *(at.key(k, optional=True).str(none=True) for k in ("tensorrt_version", "compute_capability")),
                   at.key("precision", optional=True).str(PRECISIONS, none=True),
                   at.key("triton_version", optional=True).str(none=True), plugin.value or {}, builder.value or {},
                   tuple(k for k in RECORD_FIELDS if k not in at.obj()))

    def record(self) -> EngineRecord:
        """What ``fastvar.compat`` judges a plan by (refused, naming them, when fields are absent)."""
        return EngineRecord.from_dict({k: getattr(self, k) for k in ("path", "sha256", *RECORD_FIELDS)
                                       if k not in self.lacks})


def _step(at: _At) -> StepPlan:
    rec = StepPlan(at.key("index").int(), at.key("h").int(1, MAX_DIM), at.key("w").int(1, MAX_DIM),
                   at.key("tokens").int(1, MAX_DIM), at.key("pruned_fraction").float(), at.key("kept").int(0, MAX_DIM),
                   at.key("skipped").bool())
    if rec.tokens != rec.h * rec.w or rec.kept > rec.tokens:
        raise ManifestError(f"{at.where}: tokens {rec.tokens} and kept {rec.kept} do not fit a {rec.h}x{rec.w} scale")
    return rec


def _schedule(at: _At) -> PrunePlan:
    steps = tuple(_step(s) for s in at.key("steps").list(1024))
    if [s.index for s in steps] != list(range(len(steps))):
        raise ManifestError(f"{at.where}.steps must be numbered 0, 1, 2, ... in order")
    block_range = [b.int(0, 4096) for b in at.key("block_range").list(2)]
    if len(block_range) != 2 or block_range[0] > block_range[1]:
        raise ManifestError(f"{at.where}.block_range is {block_range}; it must be [first, end) blocks")
    return PrunePlan(at.key("spec").str(), steps, at.key("cache_scale").int(0, max(len(steps) - 1, 0), none=True),
                     (block_range[0], block_range[1]),
                     at.key("first_step_kv", optional=True).int(0, MAX_DIM, none=True))


@dataclass(frozen=True)
class SourceFile:
    """A checkpoint file or folder as ``export.artifact.file_identity`` recorded it (outside the artifact)."""

    path: str
    files: tuple[tuple[str, int, int], ...]  # (name, size, mtime in ns)

    @classmethod
    def read(cls, at: _At) -> SourceFile:
        files = []
        for f in at.key("files").list(1 << 20):
            parts = f.list(3)
            if len(parts) != 3:
                raise ManifestError(f"{f.where} must be [name, size, mtime_ns]")
            files.append((parts[0].str(), parts[1].int(0, MAX_BYTES), parts[2].int(*SEEDS)))
        return cls(at.key("path").str(), tuple(files))

    def to_dict(self) -> dict:
        return {"path": self.path, "files": [list(f) for f in self.files]}


@dataclass(frozen=True)
class SourceRecord:
    """Where the weights came from: a preset's random weights (preset, depth, seed) or checkpoint files by role
    (``ckpt``, and Infinity's ``vae``)."""

    kind: str
    preset: str | None
    depth: int | None
    seed: int | None
    files: dict[str, SourceFile]

    @classmethod
    def read(cls, at: _At) -> SourceRecord:
        kind = at.key("kind").str(("random-init", "checkpoint"))
        if kind == "random-init":
            return cls(kind, at.key("preset").str(), at.key("depth").int(1, 4096), at.key("seed").int(*SEEDS), {})
        at.key("ckpt")
        return cls(kind, None, None, None, {k: SourceFile.read(v) for k, v in at.items() if k != "kind"})


def _infinity_config(cfg: _At) -> None:
    """What a run reads of an Infinity config (``fastvar.family.infinity``: text width, geometry), with the
    derived values equal to what the fields give."""
    cfg.key("text_channels").int(1, MAX_DIM)
    patchify = cfg.key("spatial_patchify").bool()
    codebook_dim = cfg.key("vae").key("codebook_dim").int(1, 1024)
    bits, vocab = cfg.key("bits").int(1, 4096), cfg.key("vocab").int(1, 8192)
    if bits != codebook_dim * (4 if patchify else 1) or vocab != 2 * bits:
        raise ManifestError(f"{cfg.where}: bits {bits} and vocab {vocab} do not follow from vae.codebook_dim "
                            f"{codebook_dim} and spatial_patchify {str(patchify).lower()} (bits = codebook_dim, "
                            "x4 when patchified; vocab = 2 x bits)")


def _hart_config(cfg: _At) -> None:
    """What a run reads of a HART config (``fastvar.family.hart``: text width, schedule, geometry)."""
    cfg.key("context_dim").int(1, MAX_DIM)
    cfg.key("context_tokens").int(1, MAX_COUNT)
    sides = [p.int(1, 4096) for p in cfg.key("patch_nums").list(64)]
    if not sides or sides != sorted(set(sides)):
        raise ManifestError(f"{cfg.where}.patch_nums is {sides}; it must be the scales' sides, increasing")
    cfg.key("vocab").int(1, 1 << 24)
    cfg.key("cvae").int(1, MAX_DIM)
    cfg.key("diff_steps").int(1, 1024)


FAMILY_CONFIGS = {"infinity": _infinity_config, "hart": _hart_config}


@dataclass(frozen=True)
class ModelRecord:
    name: str
    family: str
    depth: int
    heads: int
    head_dim: int
    config: dict  # as written, its fields that runs read checked (``FAMILY_CONFIGS``); ``config_from_dict``: the rest
    source: SourceRecord

    @classmethod
    def read(cls, at: _At) -> ModelRecord:
        cfg = at.key("config")
        family = at.key("family", optional=True).str(tuple(FAMILY_CONFIGS), none=True) or "infinity"
        FAMILY_CONFIGS[family](cfg)
        return cls(at.key("name").str(), family,
                   cfg.key("depth").int(1, 4096), cfg.key("heads").int(1, 4096), cfg.key("head_dim").int(1, 4096),
                   cfg.obj(), SourceRecord.read(at.key("source")))


@dataclass(frozen=True)
class MemoryRecord:
    """One item of the memory plan the export predicted (``export.memory_plan.MemoryItem``)."""

    name: str
    bytes: int
    note: str

    @classmethod
    def read(cls, at: _At) -> MemoryRecord:
        return cls(at.key("name").str(), at.key("bytes").int(0, MAX_BYTES), at.key("note").str())


@dataclass(frozen=True)
class Manifest:
    """The fields the stages read, typed; ``Artifact.data`` keeps the JSON for writing, merging and copying."""

    complete: bool
    model: ModelRecord
    resolution: str
    aspect: str
    pixels: tuple[int, int]
    precision: str
    batch: int
    text_len: int
    guidance: bool
    restore_op: str
    schedule: PrunePlan
    scales: tuple[StepPlan, ...]
    graphs: dict[str, GraphRecord]
    weights: tuple[WeightRecord, ...]
    codebook: str | None  # the store tensor a family embeds sampled indices with (HART), if any
    memory_plan: tuple[MemoryRecord, ...]
    engines: dict[str, EngineFile]

    @property
    def steps(self) -> tuple[StepPlan, ...]:
        return self.schedule.steps

    @classmethod
    def read(cls, data: Any, version: int) -> Manifest:
        at = _At(data, "")
        at.obj()
        got = at.key("format_version").value
        if got != version:
            raise ManifestError(f"format_version is {got!r}; this fastvar-trt reads {version}")
        schedule = _schedule(at.key("schedule"))
        pixels = tuple(p.int(1, MAX_DIM) for p in at.key("pixels").list(2))
        if len(pixels) != 2:
            raise ManifestError(f"pixels is {list(pixels)}; it must be [height, width]")
        weights = tuple(WeightRecord.read(w) for w in at.key("weights").list(64))
        engines = at.key("engines", optional=True)
        m = cls(
            complete=at.key("complete").bool(), model=ModelRecord.read(at.key("model")),
            resolution=at.key("resolution").str(), aspect=at.key("aspect").str(), pixels=pixels,
            precision=at.key("precision").str(PRECISIONS), batch=at.key("batch").int(1, 4096),
            text_len=at.key("text_len").int(1, 1 << 16), guidance=at.key("guidance").bool(),
            restore_op=at.key("restore_op").str(("custom", "custom-add", "standard")), schedule=schedule,
            scales=tuple(_step(s) for s in at.key("scales").list(1024)),
            graphs={n: GraphRecord.read(n, g) for n, g in at.key("graphs").items()},
            weights=weights, codebook=at.key("codebook", optional=True).str(none=True),
            memory_plan=tuple(MemoryRecord.read(it) for it in at.key("memory_plan").key("items").list(1024)),
            engines={} if engines.value is None else {n: EngineFile.read(e) for n, e in engines.items()},
        )
        if m.model.family == "hart" and [s.h for s in m.scales] != m.model.config["patch_nums"]:
            raise ManifestError(f"model.config.patch_nums is {m.model.config['patch_nums']}, but the scales' sides are "
                                f"{[s.h for s in m.scales]}")
        return m
