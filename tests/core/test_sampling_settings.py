"""fastvar/sampling.py: per-row sampling settings, their defaults from the family, and their refusals."""

import pytest

from fastvar.family import family
from fastvar.sampling import RowSampling, SamplingSettings


def test_for_batch_fills_the_family_defaults_and_numbers_the_seeds():
    inf = SamplingSettings.for_batch(family("infinity").sampling, 3, seed=10)
    assert inf.seeds == (10, 11, 12) and inf.cfg == 4.0 and inf.tau == 0.5 and inf.more_smooth
    hart = SamplingSettings.for_batch(family("hart").sampling, 1, seed=0)
    assert hart.cfg == 4.5 and hart.tau is None and hart.more_smooth  # HART samples without a temperature
    assert not SamplingSettings.for_batch(family("hart").sampling, 1, more_smooth=False).more_smooth
    unguided = SamplingSettings.for_batch(family("infinity").sampling, 1, guided=False)
    assert unguided.cfg == 1.0
    given = SamplingSettings.for_batch(family("infinity").sampling, 2, seed=1, cfg=3.0, tau=1.0)
    assert given.rows == (RowSampling(1, 3.0, 1.0), RowSampling(2, 3.0, 1.0))


def test_rows_with_different_guidance_are_refused_by_name():
    s = SamplingSettings((RowSampling(0, 4.0, 0.5), RowSampling(1, 3.0, 0.5)))
    assert s.seeds == (0, 1) and s.tau == 0.5
    with pytest.raises(ValueError, match=r"different cfg values \(3.0, 4.0\).*separate batches"):
        _ = s.cfg


@pytest.mark.parametrize(("kw", "msg"), [
    (dict(seed=-1, cfg=4.0, tau=0.5), "seed must be an integer"),
    (dict(seed=2**63, cfg=4.0, tau=0.5), "seed must be an integer"),
    (dict(seed=True, cfg=4.0, tau=0.5), "seed must be an integer"),
    (dict(seed=0, cfg=float("nan"), tau=0.5), "cfg must be a finite number"),
    (dict(seed=0, cfg=4.0, tau=0.0), "tau must be a finite number > 0"),
    (dict(seed=0, cfg=4.0, tau=float("inf")), "tau must be a finite number > 0"),
])
def test_a_row_refuses_bad_values(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RowSampling(**kw)


def test_a_setting_the_family_does_not_use_is_refused():
    with pytest.raises(ValueError, match="samples without a temperature"):
        SamplingSettings.for_batch(family("hart").sampling, 1, tau=0.7)
    with pytest.raises(ValueError, match="no feedback choice"):
        SamplingSettings.for_batch(family("infinity").sampling, 1, more_smooth=False)


def test_batches_refuse_what_does_not_fit():
    with pytest.raises(ValueError, match="at least one row"):
        SamplingSettings(())
    with pytest.raises(ValueError, match="batch must be an integer >= 1"):
        SamplingSettings.uniform(0, 0, 4.0, 0.5)
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\*\*63 - batch\]"):
        SamplingSettings.uniform(2, 2**63 - 1, 4.0, 0.5)  # the second row's seed would not fit
