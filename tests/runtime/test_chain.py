"""runtime/chain.py: per-row noise (an image depends on its own seed only), the clock that times the loop,
what a step is called with (HART's guidance weight in ``cfg_scale``, no temperature), and rows whose values
go non-finite (flagged on the device, failing only their own image)."""

import contextlib
import dataclasses

import numpy as np
import pytest
import torch

from fastvar.export.models.checkpoint import build_random_infinity, build_random_vae
from fastvar.export.models.hart_checkpoint import build_random_hart, build_random_tokenizer
from fastvar.export.models.hart_config import preset as hart_preset
from fastvar.export.models.hart_sampling import cfg_weight
from fastvar.export.models.infinity_config import preset
from fastvar.export.schedules import hart_prune_plan, hart_schedule, prune_plan, scale_schedule
from fastvar.runtime.backends.hart_torch import HARTTorchBackend
from fastvar.runtime.backends.torch_ref import TorchBackend
from fastvar.runtime.chain import Geometry, HARTGeometry, NonFiniteRows, SamplingSettings, generate
from fastvar.sampling import RowSampling


@pytest.fixture(scope="module")
def infinity():
    cfg = preset("infinity-tiny")
    model, vae = build_random_infinity(cfg, 0), build_random_vae(cfg.vae, 1)
    sched = scale_schedule(256)
    plan = prune_plan(sched, "none", cfg.depth)
    return TorchBackend(model, vae, sched, plan), sched, plan, Geometry(cfg.bits, cfg.vae.codebook_dim, False)


@pytest.fixture(scope="module")
def hart():
    cfg = dataclasses.replace(hart_preset("hart-tiny"), patch_nums=(1, 2, 4, 8))
    model, tok = build_random_hart(cfg, 0), build_random_tokenizer(cfg.tokenizer, 1)
    sched = hart_schedule(cfg.patch_nums)
    plan = hart_prune_plan(sched, "none", cfg.depth, cfg.context_tokens)
    return HARTTorchBackend(model, tok, plan), sched, plan, HARTGeometry(cfg.patch_nums, cfg.vocab, cfg.cvae,
                                                                          cfg.diff_steps)


def _text(width, batch):
    return torch.randn(1, 6, width, generator=torch.Generator().manual_seed(3)).expand(batch, -1, -1).contiguous()


@pytest.mark.parametrize("which", ["infinity", "hart"])
def test_each_row_is_what_its_own_seed_makes_it(which, request):
    """Same text in both rows, seeds 5 and 9: each row equals the batch-1 run of its seed, so an image does
    not depend on what else is in its batch (the rows of one shared generator would)."""
    backend, sched, plan, geom = request.getfixturevalue(which)
    width = 2048 if which == "infinity" else 1536
    cfg, tau = (4.0, 0.5) if which == "infinity" else (4.5, None)
    both = generate(backend, sched, plan, geom, _text(width, 2), torch.tensor([6, 6]),
                    SamplingSettings((RowSampling(5, cfg, tau), RowSampling(9, cfg, tau))))
    for row, seed in enumerate((5, 9)):
        alone = generate(backend, sched, plan, geom, _text(width, 1), torch.tensor([6]),
                         SamplingSettings.uniform(1, seed, cfg, tau))
        for key, tokens in alone.tokens.items():
            assert np.array_equal(both.tokens[key][row], tokens[0]), (seed, key)
        assert np.abs(both.images[row].astype(int) - alone.images[0].astype(int)).max() <= 1
    assert not np.array_equal(both.tokens[max(both.tokens)][0], both.tokens[max(both.tokens)][1])


def test_settings_must_have_one_row_per_image(infinity):
    backend, sched, plan, geom = infinity
    with pytest.raises(ValueError, match="the sampling settings have 1 rows, the text 2"):
        generate(backend, sched, plan, geom, _text(2048, 2), torch.tensor([6, 6]),
                 SamplingSettings.uniform(1, 0, 4.0, 0.5))


class CountingClock:
    """Marks are 0, 1, 2, ...: every interval the chain reports is a count of its own marks."""

    def __init__(self) -> None:
        self.n, self.waited = -1, 0

    def mark(self) -> int:
        self.n += 1
        return self.n

    def seconds(self, start: int, end: int) -> float:
        return float(end - start)

    def wait(self) -> None:
        self.waited += 1


def test_the_chain_times_with_the_clock_it_is_given(infinity):
    backend, sched, plan, geom = infinity
    clock = CountingClock()
    res = generate(backend, sched, plan, geom, _text(2048, 1), torch.tensor([6]),
                   SamplingSettings.uniform(1, 0, 4.0, 0.5), clock=clock)
    n = len(plan.executed)
    # marks: loop start, end of conditioning, end of each step, end of decode
    assert clock.n == n + 2 and clock.waited == 1
    assert [s["seconds"] for s in res.timings["steps"]] == [1.0] * n
    assert res.timings["loop_s"] == n + 1 and res.timings["decode_s"] == 1.0


def test_hart_steps_get_the_ramped_weight_and_no_temperature(hart):
    backend, sched, plan, geom = hart
    calls = []
    inner = backend.step

    def spy(st, call):
        calls.append((st.index, call))
        return inner(st, call)

    backend.step = spy
    try:
        generate(backend, sched, plan, geom, _text(1536, 1), torch.tensor([6]),
                 SamplingSettings.uniform(1, 0, 4.5, None))
    finally:
        del backend.step
    steps = len(geom.patch_nums)
    assert [i for i, _ in calls] == list(range(steps))
    for i, call in calls:
        assert call.cfg_scale == cfg_weight(4.5, i, steps) and call.inv_tau is None and call.noise is None
        assert call.write_kv == (i != steps - 1) and (call.state is None) == (i == 0)


FAMILY = {"infinity": (2048, 4.0, 0.5), "hart": (1536, 4.5, None)}


@contextlib.contextmanager
def poisoned(backend, row: int, step: int, value: float = float("nan"), call: str = "step"):
    """The backend's ``call`` (``step``: its logits; ``diffusion``: the residual) returns ``value`` in one row at
    one step, as an overflow in that row alone would."""
    inner = getattr(backend, call)

    def wrapper(*args):
        out = inner(*args)
        hit = call == "diffusion" or args[0].index == step
        logits = out[0] if call == "step" else out
        if hit:
            logits = logits.clone()
            logits[row] = value
        return (logits, out[1]) if call == "step" else logits

    setattr(backend, call, wrapper)
    try:
        yield
    finally:
        delattr(backend, call)


def _two_rows(which, request, **kw):
    backend, sched, plan, geom = request.getfixturevalue(which)
    width, cfg, tau = FAMILY[which]
    return generate(backend, sched, plan, geom, _text(width, 2), torch.tensor([6, 6]),
                    SamplingSettings.uniform(2, 5, cfg, tau), **kw)


@pytest.mark.parametrize("which,value", [("infinity", float("nan")), ("hart", float("inf"))])
def test_a_row_whose_logits_go_non_finite_fails_alone(which, value, request):
    """Row 1's logits turn non-finite at step 2: row 1 fails naming that scale, row 0's image is byte for byte
    the one it makes beside a good row, and the tokens keep both rows (the evidence)."""
    backend, _, plan, _ = request.getfixturevalue(which)
    clean = _two_rows(which, request)
    assert clean.rows == (0, 1) and clean.failed == {}
    st = plan.executed[2]
    with poisoned(backend, row=1, step=st.index, value=value):
        res = _two_rows(which, request, allow_failed_rows=True)
    assert res.failed == {1: f"the logits of scale {st.index} ({st.h}x{st.w} tokens)"}
    assert res.rows == (0,) and res.images.shape[0] == 1
    assert np.array_equal(res.images[0], clean.images[0])
    assert all(t.shape[0] == 2 for t in res.tokens.values())
    with poisoned(backend, row=1, step=st.index, value=value), pytest.raises(NonFiniteRows) as err:
        _two_rows(which, request)  # a caller that needs every row (validation, bench): an error
    assert f"image 1 (seed 6): NaN or infinity first in the logits of scale {st.index}" in str(err.value)


def test_hart_diffusion_output_is_checked(hart, request):
    """HART's last step also samples through the diffusion head: a non-finite residual fails its row."""
    backend, _, plan, _ = hart
    last = plan.executed[-1]
    with poisoned(backend, row=0, step=last.index, call="diffusion"):
        res = _two_rows("hart", request, allow_failed_rows=True)
    assert res.failed == {0: f"the diffusion head's output at scale {last.index} ({last.h}x{last.w} tokens)"}
    assert res.rows == (1,)


def test_every_row_failed_skips_the_decoder(infinity, request):
    backend = infinity[0]
    decodes = []
    inner = backend.decode
    backend.decode = lambda state: decodes.append(state) or inner(state)
    try:
        with poisoned(backend, row=slice(None), step=0):
            res = _two_rows("infinity", request, allow_failed_rows=True)
    finally:
        del backend.decode
    assert set(res.failed) == {0, 1} and res.rows == () and len(res.images) == 0 and decodes == []


HOST_READS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@pytest.mark.parametrize("which", ["infinity", "hart"])
def test_the_checks_read_the_device_once_after_the_loop(which, request, monkeypatch):
    """No host synchronisation between a backend's start and end_loop (every tensor-to-host read counted);
    the flags are read once, after the loop, and still catch the bad row."""
    from fastvar.runtime.nonfinite import RowFlags

    backend, _, plan, _ = request.getfixturevalue(which)
    in_loop, reads, flag_reads = [False], [], []
    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *a, _name=name, _original=original, **k):
            if in_loop[0]:
                reads.append(_name)
            return _original(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    original_read = RowFlags.read
    monkeypatch.setattr(RowFlags, "read", lambda self: flag_reads.append(in_loop[0]) or original_read(self))
    start, end = backend.start, backend.end_loop
    monkeypatch.setattr(backend, "start", lambda *a, **k: (in_loop.__setitem__(0, True), start(*a, **k))[1])
    monkeypatch.setattr(backend, "end_loop", lambda: (end(), in_loop.__setitem__(0, False))[0])
    with poisoned(backend, row=0, step=plan.executed[1].index):
        res = _two_rows(which, request, allow_failed_rows=True)
    assert reads == [] and flag_reads == [False]
    assert list(res.failed) == [0]
