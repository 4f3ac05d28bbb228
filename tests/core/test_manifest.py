"""The manifest is read as typed records and checked field by field: a hostile or damaged manifest is a clean
exit 2 that names the field, never a traceback or an allocation sized by a number in the file."""

import copy
import json
import shutil

import pytest
from click.testing import CliRunner
from conftest import export_tiny
from support.full_disk import full_disk

from fastvar.cli import build_cmd, export_cmd, run_cmd, validate_cmd
from fastvar.family import family, for_artifact, for_model
from fastvar.manifest import Artifact, ArtifactError, file_record

SMALL = ["--model", "infinity-tiny", "--random-init", "--res", "256", "--schedule", "12:0.4,16:0.5", "--text-len", "8",
         "--backend", "onnxruntime"]  # the export of the ``small`` fixture, as a user types it


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest") / "a"
    export_tiny(root, "12:0.4,16:0.5", res="256", text_len=8)
    return root


@pytest.fixture(scope="module")
def hart_manifest(tmp_path_factory) -> dict:
    """A hart-tiny artifact's manifest: every command reads and checks it before it touches another file."""
    from fastvar.export.artifact import ExportOptions, export

    root = tmp_path_factory.mktemp("hart") / "a"
    export(ExportOptions(model="hart-tiny", random_init=True, res="1024", schedule="none", out=str(root)),
           log=lambda _: None)
    Artifact.load(root).verify()
    return json.loads((root / "manifest.json").read_text())


def _commands(art, tmp_path):
    return ((run_cmd, [str(art), "--out", str(tmp_path / "x.png")]), (validate_cmd, [str(art), "--no-e2e"]),
            (build_cmd, [str(art), "--check-only"]))


def _mutate(m: dict, where: str, value) -> dict:
    m = copy.deepcopy(m)
    *path, last = where.split(".")
    node = m
    for p in path:
        node = node[int(p)] if isinstance(node, list) else node[p]
    if value is KeyError:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return m


_ENGINE = {"path": "engines/decoder.plan", "sha256": "0" * 64, "graph_key": "k"}


@pytest.mark.parametrize("where,value,named", [
    ("batch", "2", "batch must be an integer"),
    ("batch", -1, "batch is -1; accepted: 1..4096"),
    ("graphs", KeyError, "graphs is missing"),
    ("model.config.depth", 10**9, "model.config.depth is 1000000000"),
    ("graphs.step_03.inputs.1.shape.0", -5, "graphs.step_03.inputs[1].shape[0] is -5"),
    ("graphs.decoder.file.path", "../../outside.onnx", "graphs.decoder.file.path is '../../outside.onnx'"),
    ("graphs.decoder.file.path", "/etc/passwd", "must be relative"),
    ("weights.0.sha256", "zz", "weights[0].sha256 must be a sha256"),
    ("schedule.steps.2.tokens", 5, "schedule.steps[2]: tokens 5 and kept 16 do not fit a 4x4 scale"),
    ("schedule.block_range", [3, 1], "schedule.block_range is [3, 1]"),
    ("precision", "fp8", "precision is 'fp8'; accepted: fp32, bf16"),
    ("resolution", 256, "resolution must be a string, not int"),
    ("aspect", None, "aspect must be a string, not NoneType"),
    ("pixels", [256], "pixels is [256]; it must be [height, width]"),
    ("pixels.1", 0, "pixels[1] is 0"),
    ("codebook", 7, "codebook must be a string"),
    ("scales.1.tokens", "4", "scales[1].tokens must be an integer"),
    ("memory_plan", [], "memory_plan must be an object"),
    ("memory_plan.items.0.bytes", -1, "memory_plan.items[0].bytes is -1"),
    ("model.source.seed", "0", "model.source.seed must be an integer"),
    ("model.source.preset", KeyError, "model.source.preset is missing"),
    ("model.source.depth", 0, "model.source.depth is 0"),
    ("model.source", {"kind": "checkpoint"}, "model.source.ckpt is missing"),
    ("model.source", {"kind": "checkpoint", "ckpt": {"path": "/m", "files": [["m", "1", 0]]}},
     "model.source.ckpt.files[0][1] must be an integer"),
    ("graphs.step_03.baked", [], "graphs.step_03.baked must be an object"),
    ("graphs.step_03.baked", {"attention_query_chunks": [0]}, "graphs.step_03.baked.attention_query_chunks[0] is 0"),
    ("engines", {"decoder": {**_ENGINE, "plugin": "aot"}}, "engines.decoder.plugin must be an object"),
    ("engines", {"decoder": {**_ENGINE, "compute_capability": 9.0}}, "engines.decoder.compute_capability must be a"),
    ("engines", {"decoder": {**_ENGINE, "builder": {"flags": "TF32"}}}, "engines.decoder.builder.flags must be a list"),
    ("engines", {"decoder": {**_ENGINE, "bytes": -3}}, "engines.decoder.bytes is -3"),
    # the model config, which the family modules index when a run starts
    ("model.config", [], "model.config must be an object, not list"),
    ("model.family", "var", "model.family is 'var'; accepted: infinity, hart"),
    ("model.config.text_channels", KeyError, "model.config.text_channels is missing"),
    ("model.config.text_channels", "2048", "model.config.text_channels must be an integer, not str"),
    ("model.config.bits", -32, "model.config.bits is -32"),
    ("model.config.bits", 16, "model.config: bits 16 and vocab 64 do not follow from vae.codebook_dim 32"),
    ("model.config.vae", [], "model.config.vae must be an object, not list"),
    ("model.config.vae.codebook_dim", KeyError, "model.config.vae.codebook_dim is missing"),
    ("model.config.vae.codebook_dim", -1, "model.config.vae.codebook_dim is -1"),
    ("model.config.spatial_patchify", "no", "model.config.spatial_patchify must be true or false, not str"),
])
def test_a_bad_field_is_named_and_every_command_exits_2(small, tmp_path, where, value, named):
    art = tmp_path / "a"
    shutil.copytree(small, art)
    m = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps(_mutate(m, where, value)))
    with pytest.raises(ArtifactError, match="Re-run fastvar-export"):
        Artifact.load(art)
    for cmd, args in ((run_cmd, [str(art), "--out", str(tmp_path / "x.png")]), (validate_cmd, [str(art)]),
                      (build_cmd, [str(art), "--check-only"])):
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2 and named in r.output, (cmd.name, r.output, r.exception)
    assert not (tmp_path / "x.png").exists()


def test_manifests_that_are_not_objects_are_refused(small, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(small, art)
    for text, kind in (("[]", "array"), ("3", "number"), ('"x"', "string"), ("null", "null")):
        (art / "manifest.json").write_text(text)
        with pytest.raises(ArtifactError, match=f"is not a manifest: it holds a JSON {kind}, not an object"):
            Artifact.load(art)
        for cmd, args in _commands(art, tmp_path):
            r = CliRunner().invoke(cmd, args)
            assert r.exit_code == 2 and f"holds a JSON {kind}" in r.output, (cmd.name, r.output, r.exception)


def test_typed_records_match_the_written_manifest(small):
    art = Artifact.load(small)
    m, d = art.manifest, art.data
    assert m.complete and m.model.family == "infinity" and m.model.depth == d["model"]["config"]["depth"]
    assert set(m.graphs) == set(d["graphs"]) and len(m.steps) == len(d["schedule"]["steps"])
    step = m.graphs["step_05"]
    assert [t.name for t in step.inputs] == [t["name"] for t in d["graphs"]["step_05"]["inputs"]]
    assert step.file.sha256 == d["graphs"]["step_05"]["file"]["sha256"]
    assert for_artifact(art) is family("infinity")


def test_an_engine_record_from_an_older_build_loads_and_is_refused_naming_what_it_lacks(small, tmp_path):
    art = tmp_path / "a"
    shutil.copytree(small, art)
    m = json.loads((art / "manifest.json").read_text())
    (art / "manifest.json").write_text(json.dumps({**m, "engines": {"decoder": {**_ENGINE, "precision": "fp32"}}}))
    rec = Artifact.load(art).manifest.engines["decoder"]
    assert rec.plugin == {} and rec.tensorrt_version is None
    with pytest.raises(ValueError, match="engine record lacks tensorrt_version, compute_capability, plugin, "
                                         "triton_version, builder; rebuild"):
        rec.record()


def test_model_names_resolve_to_their_family():
    assert for_model("hart-tiny") is family("hart") and for_model("hart") is family("hart")
    assert for_model("infinity-2b") is family("infinity")
    with pytest.raises(ValueError, match="unknown model 'nope'; known Infinity models"):
        for_model("nope").preset("nope")
    with pytest.raises(ValueError, match="unknown model family 'var'"):
        family("var")


def test_a_file_of_the_artifact_that_is_a_link_is_refused(small, tmp_path):
    """A graph swapped for a symbolic link to a file outside is never run; a linked artifact root is fine."""
    art = tmp_path / "a"
    shutil.copytree(small, art)
    graph = art / "graphs" / "decoder.onnx"
    outside = tmp_path / "outside.onnx"
    shutil.move(graph, outside)
    graph.symlink_to(outside)
    for cmd, args in ((run_cmd, [str(art), "--out", str(tmp_path / "x.png")]), (build_cmd, [str(art), "--check-only"])):
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2 and f"{graph} is a symbolic link" in r.output, (cmd.name, r.output)
    graph.unlink()
    shutil.move(outside, graph)
    linked = tmp_path / "engines"
    linked.symlink_to(art)
    r = CliRunner().invoke(build_cmd, [str(linked), "--check-only"])
    assert r.exit_code == 0, r.output


def _rename(model, old: str, new: str) -> None:
    """Rename a graph input or output everywhere the graph mentions it."""
    g = model.graph
    for vi in [*g.input, *g.output]:
        if vi.name == old:
            vi.name = new
    for node in g.node:
        for names in (node.input, node.output):
            for i, n in enumerate(names):
                if n == old:
                    names[i] = new


def _edit_graph(art, graph: str, edit_file, edit_record=None) -> None:
    """Edit a graph file (and its manifest record), then re-record its size and sha256 so the hash check
    passes: a file that is the one the manifest names, but not what the manifest says it is."""
    import onnx

    path = art / "graphs" / f"{graph}.onnx"
    if callable(edit_file):
        model = onnx.load(str(path), load_external_data=False)
        edit_file(model)
        onnx.save(model, str(path))
    else:
        path.write_bytes(edit_file)
    m = json.loads((art / "manifest.json").read_text())
    if edit_record is not None:
        edit_record(m["graphs"][graph])
    m["graphs"][graph]["file"] = file_record(art, path)
    (art / "manifest.json").write_text(json.dumps(m))


def test_a_graph_edited_and_rehashed_is_refused_and_a_re_export_repairs_it(small, tmp_path):
    """A renamed input passed validation and failed at run time, and a re-export called it up to date: now
    every command refuses it naming the graph and the tensor, and the same fastvar-export rewrites it."""
    art = tmp_path / "a"
    shutil.copytree(small, art)
    _edit_graph(art, "step_03", lambda m: _rename(m, "inv_tau", "inv_tau_renamed"))
    for cmd, args in _commands(art, tmp_path):
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2, (cmd.name, r.output, r.exception)
        assert "graph step_03: the graph file has input 'inv_tau_renamed', which the manifest does not record" \
            in r.output and "the manifest records input 'inv_tau', which the graph file does not have" in r.output
    assert not (tmp_path / "x.png").exists()
    r = CliRunner().invoke(export_cmd, [*SMALL, "--out", str(art)])
    assert r.exit_code == 0 and "step_03" in r.output and "exported 1 of 12 files" in r.output, r.output
    assert (art / "graphs" / "step_03.onnx").read_bytes() == (small / "graphs" / "step_03.onnx").read_bytes()
    r = CliRunner().invoke(validate_cmd, [str(art), "--no-e2e"])
    assert r.exit_code == 0 and "passed: 11 graphs" in r.output, r.output
    r = CliRunner().invoke(export_cmd, [*SMALL, "--out", str(art)])
    assert r.exit_code == 0 and "up to date" in r.output, r.output


def _set_elem_type(name: str, elem: int):
    def edit(model):
        for vi in [*model.graph.input, *model.graph.output]:
            if vi.name == name:
                vi.type.tensor_type.elem_type = elem
    return edit


def _set_dim(name: str, axis: int, value: int):
    def edit(model):
        for vi in model.graph.input:
            if vi.name == name:
                vi.type.tensor_type.shape.dim[axis].dim_value = value
    return edit


def _rename_record(old: str, new: str):
    def edit(rec):
        for t in [*rec["inputs"], *rec["outputs"]]:
            if t["name"] == old:
                t["name"] = new
    return edit


def _drop_weight(rec):
    rec["weights"] = rec["weights"][1:]


@pytest.mark.parametrize("graph,edit_file,edit_record,named", [
    ("step_01", _set_elem_type("bits", 6), None,
     "graph step_01: output 'bits' is int32 [1, 4, 32] in the graph file, the manifest records uint8 [1, 4, 32]"),
    ("step_02", _set_dim("codes", 1, 17), None,
     "graph step_02: input 'codes' is float32 [1, 17, 32] in the graph file, the manifest records float32 [1, 16, 32]"),
    ("step_02", lambda m: _rename(m, "noise", "noise2"), _rename_record("noise", "noise2"),
     "graph step_02: input 'noise2' is no input the runtime feeds a step graph; graph step_02: the runtime feeds "
     "input 'noise', which the graph lacks"),
    ("step_04", lambda m: _rename(m, "new_k_3", "new_k_7"), _rename_record("new_k_3", "new_k_7"),
     "graph step_04: output 'new_k_7' is no output the runtime reads a step graph"),
    ("condition", lambda m: None, _drop_weight, "which the manifest does not record"),
    ("decoder", b"\xff" * 64, None, "graphs/decoder.onnx is not a readable ONNX model"),
])
def test_a_graph_that_does_not_declare_what_its_record_says_is_refused(small, tmp_path, graph, edit_file,
                                                                       edit_record, named):
    art = tmp_path / "a"
    shutil.copytree(small, art)
    _edit_graph(art, graph, edit_file, edit_record)
    for cmd, args in _commands(art, tmp_path):
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2 and named in r.output, (cmd.name, r.output, r.exception)
        assert "re-run fastvar-export on this directory to rewrite them" in r.output
    assert not (tmp_path / "x.png").exists()


def test_a_full_disk_names_the_weight_store_or_golden_being_written(small, tmp_path, monkeypatch):
    """ENOSPC while a re-export rewrites the weight store, or while validation records the goldens: exit 2 naming
    the stage and the user's path (never our temp file); the same export run again finishes the artifact."""
    import fastvar.atomic
    import fastvar.export.weight_store

    art = tmp_path / "a"
    shutil.copytree(small, art)
    store = art / "weights" / "transformer.safetensors"
    store.unlink()
    with monkeypatch.context() as mp:
        full_disk(mp, fastvar.export.weight_store, store.name, budget=4096)
        r = CliRunner().invoke(export_cmd, [*SMALL, "--out", str(art)])
    assert r.exit_code == 2, (r.output, r.exception)
    assert f"writing the weight store to {store} failed: No space left on device" in r.output
    assert ".fastvar.tmp" not in r.output and not list(store.parent.iterdir())
    r = CliRunner().invoke(export_cmd, [*SMALL, "--out", str(art)])
    assert r.exit_code == 0 and "exported 1 of 12 files" in r.output, r.output
    full_disk(monkeypatch, fastvar.atomic, "step_03.inputs.npz")
    r = CliRunner().invoke(validate_cmd, [str(art), "--no-e2e"])
    golden = art / "goldens" / "step_03.inputs.npz"
    assert r.exit_code == 2, (r.output, r.exception)
    assert f"writing the golden inputs of step_03 to {golden} failed: No space left on device" in r.output
    assert ".fastvar.tmp" not in r.output and not list(golden.parent.glob(".*"))


@pytest.mark.parametrize("where,value,named", [
    ("model.config.patch_nums", 5, "model.config.patch_nums must be a list, not int"),
    ("model.config.patch_nums", [1, 2, "3"], "model.config.patch_nums[2] must be an integer, not str"),
    ("model.config.patch_nums", [2, 1], "model.config.patch_nums is [2, 1]; it must be the scales' sides, increasing"),
    ("model.config.patch_nums", [1, 2, 3], "patch_nums is [1, 2, 3], but the scales' sides are [1, 2, 3, 4"),
    ("model.config.context_dim", 0, "model.config.context_dim is 0"),
    ("model.config.vocab", 1e10, "model.config.vocab must be an integer, not float"),
    ("model.config.diff_steps", None, "model.config.diff_steps must be an integer, not NoneType"),
    ("model.config.cvae", KeyError, "model.config.cvae is missing"),
])
def test_a_bad_hart_config_field_is_named_and_every_command_exits_2(hart_manifest, tmp_path, where, value, named):
    """HART's family module indexes these when a run starts (KeyError, TypeError, a schedule of the wrong size)."""
    art = tmp_path / "a"
    art.mkdir()
    (art / "manifest.json").write_text(json.dumps(_mutate(hart_manifest, where, value)))
    for cmd, args in _commands(art, tmp_path):
        r = CliRunner().invoke(cmd, args)
        assert r.exit_code == 2 and named in r.output, (cmd.name, r.output, r.exception)


def test_a_config_a_family_cannot_build_is_a_clear_error():
    """``config_from_dict`` (the benchmark's FLOP count reads it) on a config with a field missing or unknown."""
    for fam, cfg in (("infinity", {"vae": {}}), ("infinity", {"vae": {"level_channels": [], "upsample_levels": []},
                                                             "unknown": 1}), ("hart", {"unknown": 1})):
        with pytest.raises(ValueError, match="model.config is not an? (Infinity|HART) config"):
            family(fam).config_from_dict(cfg)
