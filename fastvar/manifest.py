"""Reading an artifact: its manifest, typed access, and integrity checks before anything runs.

Every file the manifest lists carries its size and sha256; a run refuses a missing, truncated or
altered file naming it, and refuses a manifest whose export did not finish.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from fastvar.manifest_schema import FileRecord, GraphRecord, Manifest, ManifestError
from fastvar.plan import PrunePlan

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
_JSON_KINDS = {list: "array", str: "string", int: "number", float: "number", bool: "boolean", type(None): "null"}


class ArtifactError(ValueError):
    """An artifact that cannot be used as it is, with the reason and what to do."""


def sha256_file(path: str | os.PathLike, chunk: int = 16 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_record(root: Path, path: Path, sha256: str | None = None) -> dict:
    """A file's manifest record; ``sha256`` when the writer hashed the bytes as it wrote them."""
    return {"path": path.relative_to(root).as_posix(), "bytes": path.stat().st_size,
            "sha256": sha256 or sha256_file(path)}


def inside(root: Path, rel: str) -> Path:
    """``root / rel`` for a path read from a file we wrote: relative, no ``..``, and no symbolic link from
    ``root`` down (the root itself may be one, e.g. ``engines -> /mnt/ssd``). Else an ``ArtifactError``."""
    parts = rel.split("/")
    if not rel or rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        raise ArtifactError(f"{rel!r} (recorded in {root}) is not a path inside the artifact: relative, no '..'")
    p = Path(root)
    for part in parts:
        p = p / part
        if p.is_symlink():
            raise ArtifactError(f"{p} is a symbolic link; an artifact's own files and folders are never links "
                                "(re-run the command that wrote it)")
    return p


def verify_file(root: Path, rec: dict | FileRecord, hash_check: bool = True) -> str | None:
    """None if the file is as recorded (a manifest's record, or the JSON of one elsewhere), else why not."""
    if isinstance(rec, dict):
        rec = FileRecord(rec["path"], rec["bytes"], rec["sha256"])
    try:
        p = inside(root, rec.path)
    except ArtifactError as err:
        return str(err)
    if not p.is_file():
        return f"{p} is missing"
    size = p.stat().st_size
    if size != rec.bytes:
        return f"{p} is {size} bytes, the manifest records {rec.bytes} (truncated or replaced)"
    if hash_check and sha256_file(p) != rec.sha256:
        return f"{p} does not match its recorded sha256 (corrupted or replaced)"
    return None


@dataclass
class Artifact:
    root: Path
    data: dict  # the manifest as written (JSON), for writing it back; the stages read ``manifest``
    manifest: Manifest

    @classmethod
    def load(cls, root: str | os.PathLike) -> Artifact:
        root = Path(root)
        path = root / MANIFEST
        if not path.is_file():
            raise ArtifactError(f"{root} has no {MANIFEST}: export one with fastvar-export --out {root}")
        try:
            data = json.loads(path.read_text())
        except ValueError as err:
            raise ArtifactError(f"{path} is not valid JSON ({err}); re-run fastvar-export") from None
        if not isinstance(data, dict):
            raise ArtifactError(f"{path} is not a manifest: it holds a JSON {_JSON_KINDS.get(type(data), 'value')}, "
                                "not an object. Re-run fastvar-export to rewrite it")
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ArtifactError(f"{path} has format_version {version!r}; this fastvar-trt reads {FORMAT_VERSION}. "
                                "Re-export with this version (fastvar-export --force)")
        try:
            manifest = Manifest.read(data, FORMAT_VERSION)
        except ManifestError as err:
            raise ArtifactError(f"{path}: {err}. Re-run fastvar-export to rewrite it") from None
        return cls(root, data, manifest)

    def verify(self, hash_check: bool = True) -> None:
        if not self.manifest.complete:
            raise ArtifactError(f"{self.root}: the export did not finish (manifest marked incomplete); "
                                "re-run the same fastvar-export command to complete it")
        problems = [why for rec in self.files() if (why := verify_file(self.root, rec, hash_check))]
        if problems:
            raise ArtifactError("; ".join(problems) + ". Re-run fastvar-export on this directory to rebuild it")
        self.verify_interfaces()

    def verify_interfaces(self) -> None:
        """Every graph file declares the inputs and outputs its record lists, as the runtime feeds and reads
        them (``fastvar.graph_io``): a file re-hashed into the manifest after an edit is refused here."""
        from fastvar.graph_io import interface_problems

        model = self.manifest.model
        problems = [f"graph {name}: {why}" for name, g in self.manifest.graphs.items()
                    for why in interface_problems(g, self.graph_path(name), model.depth, model.family)]
        if problems:
            raise ArtifactError("; ".join(problems) + f". {self.root}: the graph files do not match the manifest; "
                                "re-run fastvar-export on this directory to rewrite them")

    def files(self) -> list[FileRecord]:
        return [*(g.file for g in self.manifest.graphs.values()), *self.manifest.weights]

    # ---- typed views ---------------------------------------------------------------------------
    def plan(self) -> PrunePlan:
        return self.manifest.schedule

    @property
    def has_plugin_nodes(self) -> bool:
        """Whether the step graphs carry FastVARRestore(Add) nodes (ONNX Runtime then needs the custom op)."""
        return self.manifest.restore_op in ("custom", "custom-add")

    def run_graphs(self) -> list[str]:
        """Graphs a generation runs (validation variants are for fastvar-validate only)."""
        return [n for n, g in self.manifest.graphs.items() if g.kind != "validate"]

    def graph(self, name: str) -> GraphRecord:
        try:
            return self.manifest.graphs[name]
        except KeyError:
            raise ArtifactError(f"{self.root}: the manifest lists no graph {name!r}") from None

    def graph_path(self, name: str) -> Path:
        return inside(self.root, self.graph(name).file.path)

    def weight_path(self) -> Path:
        return inside(self.root, self.manifest.weights[0].path)
