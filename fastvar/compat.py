"""Engine compatibility records: what a TensorRT plan was built with, and whether this machine matches.

A plan is tied to the exact TensorRT version and GPU compute capability it was built on (unless built
version- or hardware-compatible, which our plugin engines are not), and an AOT plugin's kernel is PTX
compiled by one Triton version. ``fastvar-build`` writes one record per engine into the manifest;
loading compares it with the machine and refuses with every reason, or rebuilds when asked.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

RECORD_FIELDS = ("tensorrt_version", "compute_capability", "plugin", "triton_version", "builder", "precision")


@dataclass(frozen=True)
class Machine:
    """What decides whether a plan loads: the TensorRT runtime and the GPU."""

    tensorrt_version: str
    compute_capability: str  # "9.0" for H100
    plugin_ptx_sha256: dict[str, str] = field(default_factory=dict)  # per target, of the plugin now registered


@dataclass(frozen=True)
class EngineRecord:
    path: str
    sha256: str
    tensorrt_version: str
    compute_capability: str
    precision: str
    plugin: dict  # {"name", "namespace", "version", "ptx_sha256"} or {} when the graph has no plugin node
    triton_version: str | None
    builder: dict  # {"optimization_level", "flags", "timing_cache"}

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EngineRecord:
        missing = [k for k in ("path", "sha256", *RECORD_FIELDS) if k not in d]
        if missing:
            raise ValueError(f"engine record lacks {', '.join(missing)}; rebuild with fastvar-build")
        return cls(**{k: d[k] for k in cls.__dataclass_fields__})


def mismatches(rec: EngineRecord, machine: Machine) -> list[str]:
    """Every reason this engine cannot run on ``machine``; empty when it can."""
    why = []
    if rec.tensorrt_version != machine.tensorrt_version:
        why.append(f"built with TensorRT {rec.tensorrt_version}, this machine has {machine.tensorrt_version} "
                   "(plans load only on the exact version that built them)")
    if rec.compute_capability != machine.compute_capability:
        sm = rec.compute_capability.replace(".", "")
        why.append(f"built for compute capability {rec.compute_capability} (sm_{sm}), "
                   f"this GPU is {machine.compute_capability}")
    ptx = rec.plugin.get("ptx_sha256")
    if ptx:
        now = machine.plugin_ptx_sha256.get(rec.compute_capability)
        if now is None:
            why.append(f"the engine embeds the {rec.plugin.get('namespace')}::{rec.plugin.get('name')} plugin, "
                       "but no plugin kernel for this GPU is registered")
        elif now != ptx:
            why.append(f"its {rec.plugin.get('name')} kernel (PTX sha256 {ptx[:12]}…) differs from the registered "
                       f"one ({now[:12]}…): the plugin changed since the build")
    return why


def check_engine(rec: EngineRecord, machine: Machine) -> None:
    """Raise with the reasons when the engine does not match this machine."""
    why = mismatches(rec, machine)
    if why:
        raise ValueError(f"{rec.path}: " + "; ".join(why) + ". Rebuild with fastvar-build DIR (or --rebuild-stale)")
