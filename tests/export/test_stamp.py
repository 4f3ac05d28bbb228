"""Step graphs stamped from per-form traces (issue 17) equal the whole-graph trace: same interface, same bound
weights, bit-identical ONNX Runtime outputs; each form is traced once; malformed forms are refused."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import ort_with_restore
from onnx import TensorProto, helper

from fastvar.export.artifact import ExportOptions, resolve, restore_spelling
from fastvar.export.graphs import spec, weight_tensors
from fastvar.export.onnx_export import ExportError, export_graph
from fastvar.export.stamp import Form, Forms, compose, export_stamped
from fastvar.export.step_parts import Part
from fastvar.export.weight_store import stored_tensor
from fastvar.plugins.restore.onnx_op import register_schema, translation_table


def _setup(model: str, restore_op: str = "standard", schedule: str = "fastvar"):
    register_schema()
    opts = ExportOptions(model=model, random_init=True, res="1024", schedule=schedule, restore_op=restore_op)
    source, sched, plan, shapes = resolve(opts)
    m, dec = source.pair()
    graphs = source.family.graphs(m, dec, sched, plan, shapes, restore_spelling(restore_op),
                                  opts.resolved_attention_budget())
    table = translation_table() if restore_op != "standard" else None
    return m, plan, {g.definition().name: g for g in graphs if hasattr(g, "parts")}, table


def _feeds(model: onnx.ModelProto, bound: list[str], weights: dict, tokens: int, seed: int = 0) -> dict:
    """Random data for every input (valid kept indices, a mixed text mask, uniform noise), stored weights."""
    rng = np.random.default_rng(seed)
    out = {}
    for vi in model.graph.input:
        if vi.name in bound:
            out[vi.name] = stored_tensor(weights, vi.name).contiguous().numpy()
            continue
        t = vi.type.tensor_type
        shape = [d.dim_value for d in t.shape.dim]
        dtype = helper.tensor_dtype_to_np_dtype(t.elem_type)
        if dtype == np.bool_:
            out[vi.name] = rng.random(shape) < 0.7
        elif vi.name.startswith("kept_"):
            out[vi.name] = np.stack([rng.permutation(tokens)[:shape[-1]] for _ in range(shape[0])]).astype(np.int64)
        elif dtype == np.int64:
            out[vi.name] = rng.integers(1, 40, shape).astype(np.int64)  # text lengths >= 1: no empty row
        elif vi.name == "noise":
            out[vi.name] = rng.random(shape).astype(dtype)
        else:
            out[vi.name] = rng.standard_normal(shape).astype(dtype)
    return out


def _interface(model: onnx.ModelProto) -> tuple:
    def one(vis):
        return [(v.name, v.type.tensor_type.elem_type, [d.dim_value for d in v.type.tensor_type.shape.dim])
                for v in vis]

    return one(model.graph.input), one(model.graph.output)


def _session(data: bytes, custom: bool):
    if custom:
        return ort_with_restore(data)
    return ort.InferenceSession(data, providers=["CPUExecutionProvider"])


def _pick(plan, graphs: dict) -> list[str]:
    """Step 0 (no past), the cache step, the first and last pruned steps, the last step, a validation variant:
    every form the schedule has."""
    executed = [st.index for st in plan.executed]
    pruned = [st.index for st in plan.executed if st.pruned]
    names = {f"step_{executed[0]:02d}", f"step_{plan.cache_scale:02d}", f"step_{pruned[0]:02d}",
             f"step_{executed[-1]:02d}", f"step_{pruned[-1]:02d}_validate"}
    names |= {"condition"} & set(graphs)  # Infinity's: the text part, then every block's K/V of it
    assert names <= set(graphs)
    return sorted(names)


@pytest.mark.parametrize("model,restore_op", [("infinity-tiny", "standard"), ("hart-tiny", "standard"),
                                              ("infinity-tiny", "custom-add")])
def test_stamped_graphs_equal_the_whole_trace(model, restore_op):
    m, plan, graphs, table = _setup(model, restore_op)
    weights = weight_tensors(m)
    forms = Forms(m, weights, table)
    for name in _pick(plan, graphs):
        g = graphs[name]
        d = g.definition()
        whole, fw = export_graph(g.module(), d, weights, table)
        stamped, fs = export_stamped(g.parts(), d, forms)
        mw, ms = onnx.load_from_string(whole), onnx.load_from_string(stamped)
        assert _interface(ms) == _interface(mw), name
        assert fs.weights == fw.weights and fs.signature() == fw.signature()
        feeds = _feeds(mw, fw.weights, weights, plan.steps[d.step].tokens if d.step is not None else 0)
        custom = restore_op != "standard"
        want = _session(whole, custom).run(None, feeds)
        got = _session(stamped, custom).run(None, feeds)
        for out, a, b in zip(mw.graph.output, want, got, strict=True):
            assert np.array_equal(a, b), f"{name}: {out.name} differs by {np.abs(a.astype(float) - b).max()}"
        if custom:
            ops = {n.op_type for n in ms.graph.node}
            assert ("FastVARRestoreAdd" in ops) == (d.step is not None and plan.steps[d.step].pruned)


def test_each_form_is_traced_once_and_blocks_are_stamped():
    """A step graph is the embedding, one part per block, the head; blocks of one form share a key, and a
    form traced for a step serves its validation variant."""
    m, plan, graphs, table = _setup("infinity-tiny")
    depth = m.cfg.depth
    pruned = next(st for st in plan.executed if st.pruned)
    step, check = graphs[f"step_{pruned.index:02d}"], graphs[f"step_{pruned.index:02d}_validate"]
    parts = step.parts()
    assert [p.label for p in parts] == ["embed", *[f"block{i}" for i in range(depth)], "head"]
    lo, hi = plan.block_range
    keys = [p.key for p in parts[1:-1]]
    assert len(set(keys[lo:hi])) == 1 and set(keys[:lo] + keys[hi:]) <= {keys[0]} | ({keys[-1]} if hi < depth else
                                                                                     set())
    assert keys[lo] != keys[0] or lo == 0
    forms = Forms(m, weight_tensors(m), table)
    export_stamped(parts, step.definition(), forms)
    assert forms.traced == len({p.key for p in parts})
    before = forms.traced
    export_stamped(check.parts(), check.definition(), forms)
    new_keys = {p.key for p in check.parts()} - {p.key for p in parts}
    assert forms.traced == before + len(new_keys) and 0 < len(new_keys) < len(check.parts())


def test_the_torch_module_runs_the_same_parts_as_the_reference_step():
    """``StepGraph.module`` (what goldens are recorded on) is the parts in order: it equals ``Infinity.step``."""
    from fastvar.export.fastvar import select_pivotal_topk
    from fastvar.export.models.infinity import Conditioning
    from fastvar.export.models.rope import rope_freqs_grid, rope_table
    from fastvar.runtime.sampling import sample_bits

    m, plan, graphs, _ = _setup("infinity-tiny")
    st = next(st for st in plan.executed if st.pruned)
    g = graphs[f"step_{st.index:02d}"]
    d = g.definition()
    gen = torch.Generator().manual_seed(1)
    x = {t.name: (torch.ones(t.shape, dtype=torch.bool) if t.dtype == "bool" else
                  torch.rand(t.shape, generator=gen)) for t in d.inputs}
    weights = weight_tensors(m)
    with torch.no_grad():
        got = dict(zip([t.name for t in d.outputs], g.module()(*[x[t.name] for t in d.inputs],
                                                              *[weights[n] for n in d.weights]), strict=True))
        cfg = m.cfg
        cond = Conditioning(batch=1, sos=None, gss=x["gss"], head_scale=x["head_scale"], head_shift=x["head_shift"],
                            text_mask=x["text_mask"], ca_k=[x[f"ca_k_{i}"] for i in range(cfg.depth)],
                            ca_v=[x[f"ca_v_{i}"] for i in range(cfg.depth)])
        sc = g.sched.scales[st.index]
        rope = rope_table(cfg.head_dim, (sc.h, sc.w), g.sched.rope_grid, rope_freqs_grid(cfg.head_dim))
        from dataclasses import replace

        prune = replace(g.prune_step(), select=select_pivotal_topk)
        subs = ("sa", "ca", "ffn")
        caches = [tuple(x[f"cache_{s}_{i}"] for s in subs) if plan.block_pruned(i) else None for i in range(cfg.depth)]
        out = m.step(st.index, x["codes"], cond, rope, [x.get(f"past_k_{i}") for i in range(cfg.depth)],
                     [x.get(f"past_v_{i}") for i in range(cfg.depth)], x["cfg_scale"], x["inv_tau"], prune=prune,
                     restore_caches=caches, q_chunks=g.q_chunks())
    assert torch.equal(got["logits"], out.logits)
    assert torch.equal(got["bits"], sample_bits(out.logits, x["noise"]))
    for i in range(cfg.depth):
        assert torch.equal(got[f"new_k_{i}"], out.new_k[i]) and torch.equal(got[f"new_v_{i}"], out.new_v[i])


def _tiny_form(outputs: list[str], produce: list[str]) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("a", TensorProto.FLOAT, [2])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [2]) for n in outputs]
    nodes = [helper.make_node("Relu", ["a"], [n]) for n in produce]
    return helper.make_model(helper.make_graph(nodes, "f", [x], outs))


def _part(label: str, key, inputs, outputs) -> Part:
    return Part(label, key, tuple(spec(n, s, "float32") for n, s in inputs),
                tuple(spec(n, s, "float32") for n, s in outputs), (), lambda m, x: x)


def test_malformed_forms_are_refused_with_the_reason():
    rep = _part("p0", ("k",), [("a", (2,))], [("b", (2,))])
    with pytest.raises(ExportError, match="outputs \\['b'\\] are not computed by any node"):
        Form(_tiny_form(["b"], []), rep, "form0")
    form = Form(_tiny_form(["b"], ["b"]), rep, "form0")
    other = _part("p1", ("other",), [("c", (2,))], [("d", (2,))])
    with pytest.raises(ExportError, match="p1 does not have the form of p0"):
        form.names_for(other)
    wrong = _part("p2", ("k",), [("c", (3,))], [("d", (2,))])
    with pytest.raises(ExportError, match=r"p2: c is float32\[3\], but its form has float32\[2\]"):
        form.names_for(wrong)
    from fastvar.export.graphs import GraphDef

    d = GraphDef("g", "step", [spec("c", (2,), "float32"), spec("e", (2,), "float32")], [spec("d", (2,), "float32")])
    with pytest.raises(ExportError, match="g: input e is not an input of any part"):
        compose(d, [(_part("p1", ("k",), [("c", (2,))], [("d", (2,))]), form)])
    ok = compose(GraphDef("g", "step", [spec("c", (2,), "float32")], [spec("d", (2,), "float32")]),
                 [(_part("p1", ("k",), [("c", (2,))], [("d", (2,))]), form)])
    onnx.checker.check_model(ok, full_check=True)
    assert [n.name for n in ok.graph.input] == ["c"] and [n.output[0] for n in ok.graph.node] == ["d"]


class _FakeGraph:
    def __init__(self, name: str, keys: list | None) -> None:
        self.name, self.keys = name, keys

    def definition(self):
        from fastvar.export.graphs import GraphDef

        return GraphDef(self.name, "step", [], [])


def test_progress_counts_only_forms_not_traced_before_and_estimates_what_is_left(monkeypatch):
    from fastvar.export import progress as pg

    graphs = [_FakeGraph("condition", None), _FakeGraph("step_00", ["e0", "b0", "b0", "h0"]),
              _FakeGraph("step_09", ["e9", "b9", "p9", "h9"]), _FakeGraph("step_09_validate", ["e9", "b9", "v9", "h9"])]
    costs = pg.graph_costs(graphs, lambda g: None if g.keys is None else [_Keyed(k) for k in g.keys])
    assert costs == {"condition": pg.WHOLE, "step_00": 3 + pg.STAMP, "step_09": 4 + pg.STAMP,
                     "step_09_validate": 1 + pg.STAMP}
    clock = iter([0.0, 4.0, 10.0, 13.5])
    monkeypatch.setattr(pg.time, "perf_counter", lambda: next(clock))
    lines: list[str] = []
    prog = pg.ExportProgress({"condition": 4.0, "step_00": 4.0}, lines.append)
    prog.start(1, 2, "condition", "condition, traced whole")
    prog.finish(1, 2, "condition")
    prog.start(2, 2, "step_00", "1x1")
    prog.finish(2, 2, "step_00")
    assert lines[0] == "[1/2] condition: condition, traced whole ..."
    assert lines[1] == "[1/2] condition exported in 4.0s; graphs: about 4s left"  # 4 units left at 1 s per unit
    assert lines[3] == "[2/2] step_00 exported in 3.5s" and prog.seconds == {"condition": 4.0, "step_00": 3.5}


class _Keyed:
    def __init__(self, key) -> None:
        self.key = key
