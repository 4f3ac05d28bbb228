"""Export readiness: ``HART.step`` (plain, and pruned with the graph spellings of FastVAR's two ops) traces
to ONNX with every state tensor an input, and ONNX Runtime reproduces the reference. Not the exporter:
the integration session builds the real per-step graphs; this pins that the reference's shape allows it."""

import dataclasses
import logging
import warnings

import onnxruntime as ort
import pytest
import torch
from torch import nn

from fastvar.export.fastvar import select_pivotal_topk
from fastvar.export.models.hart import HART, HARTConditioning
from fastvar.export.models.hart_checkpoint import build_random_hart
from fastvar.export.models.hart_config import preset
from fastvar.export.models.hart_fastvar import HARTPruneStep
from fastvar.export.onnx_export import OPSET
from fastvar.plugins.restore import restore_standard


class _Step(nn.Module):
    """One image step with its state as inputs (depth 2): x_in, head AdaLN, text positions, KV, caches, w."""

    def __init__(self, model: HART, si: int, prune: HARTPruneStep | None) -> None:
        super().__init__()
        self.model, self.si, self.prune = model, si, prune

    def forward(self, x_in, scale, shift, pos, k0, v0, k1, v1, a0, f0, a1, f1, w):
        rows = scale.shape[0]
        cond = HARTConditioning(batch=rows // 2, sos=scale.new_zeros(rows, 1, scale.shape[-1]), head_scale=scale,
                                head_shift=shift, context_pos=pos)
        caches = [(a0, f0), (a1, f1)] if self.prune is not None else None
        out = self.model.step(self.si, x_in, cond, [k0, k1], [v0, v1], w, prune=self.prune, restore_caches=caches)
        return out.logits, out.new_k[0], out.new_v[1]


@pytest.fixture(scope="module")
def state():
    cfg = dataclasses.replace(preset("hart-tiny"), patch_nums=(1, 2, 3, 4))
    model = build_random_hart(cfg, 0)
    g = torch.Generator().manual_seed(2)
    ctx = torch.randn(1, 300, 1536, generator=g)
    mask = torch.zeros(1, 300, dtype=torch.bool)
    mask[0, :30] = True
    x_ins = [torch.randn(1, p * p, cfg.cvae, generator=g) for p in cfg.patch_nums[1:]]
    with torch.no_grad():
        cond = model.condition(ctx, mask)
        pk, pv, caches = [None, None], [None, None], None
        for si in range(3):
            o = model.step(si, None if si == 0 else x_ins[si - 1], cond, pk, pv, 1.0, collect_caches=True)
            pk = [k if p is None else torch.cat((p, k)) for p, k in zip(pk, o.new_k, strict=True)]
            pv = [v if p is None else torch.cat((p, v)) for p, v in zip(pv, o.new_v, strict=True)]
            caches = o.caches
    args = (x_ins[2], cond.head_scale, cond.head_shift, cond.context_pos, pk[0], pv[0], pk[1], pv[1],
            caches[0][0], caches[0][1], caches[1][0], caches[1][1], torch.tensor(1.5))
    return model, args


@pytest.mark.parametrize("pruned", [False, True], ids=["full", "fastvar"])
def test_step_exports_and_onnxruntime_reproduces_it(state, pruned):
    model, args = state
    prune = HARTPruneStep(kept=6, hw=(4, 4), cache_hw=(3, 3), select=select_pivotal_topk,
                          restore=restore_standard) if pruned else None
    wrapper = _Step(model, 3, prune).eval()
    names = ["x_in", "scale", "shift", "pos", "k0", "v0", "k1", "v1", "a0", "f0", "a1", "f1", "w"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        logging.getLogger("torch.onnx").setLevel(logging.ERROR)
        prog = torch.onnx.export(wrapper, args, dynamo=True, opset_version=OPSET, optimize=True, input_names=names,
                                 output_names=["logits", "k0_new", "v1_new"], verbose=False, report=False)
    ops = {n.op_type for n in prog.model_proto.graph.node}
    assert ({"TopK", "ScatterElements"} <= ops) == pruned  # FastVAR's selection and restoration, as graph ops
    sess = ort.InferenceSession(prog.model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    used = {i.name for i in sess.get_inputs()}
    got = sess.run(None, {n: a.numpy() for n, a in zip(names, args, strict=True) if n in used})
    with torch.no_grad():
        want = wrapper(*args)
    assert got[1].shape == ((6 if pruned else 16), 2, model.cfg.heads, model.cfg.head_dim)
    for g, w in zip(got, want, strict=True):
        assert torch.allclose(torch.from_numpy(g), w, rtol=1e-5, atol=1e-4)
