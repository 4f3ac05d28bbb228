"""Engine compatibility records refuse a plan on the wrong TensorRT, GPU or plugin kernel, saying why."""

import pytest

from fastvar.compat import EngineRecord, Machine, check_engine, mismatches


def _rec(**kw):
    base = dict(path="engines/step_09.trt10.13.sm90.plan", sha256="ab" * 32, tensorrt_version="10.13.0",
                compute_capability="9.0", precision="bf16",
                plugin={"name": "FastVARRestore", "namespace": "fastvar", "version": "1", "ptx_sha256": "c" * 64},
                triton_version="3.6.0", builder={"optimization_level": 3, "flags": [], "timing_cache": True})
    base.update(kw)
    return EngineRecord(**base)


def test_matching_machine_passes_and_roundtrips():
    rec = _rec()
    check_engine(rec, Machine("10.13.0", "9.0", {"9.0": "c" * 64}))
    assert EngineRecord.from_dict(rec.to_dict()) == rec


def test_every_mismatch_is_named():
    why = mismatches(_rec(), Machine("11.1.0", "8.0", {"8.0": "d" * 64}))
    text = " ".join(why)
    assert len(why) == 3
    assert "TensorRT 10.13.0" in text and "11.1.0" in text and "sm_90" in text and "no plugin kernel" in text
    with pytest.raises(ValueError, match="step_09.*Rebuild"):
        check_engine(_rec(), Machine("10.13.0", "9.0", {"9.0": "d" * 64}))
    assert "plugin changed" in mismatches(_rec(), Machine("10.13.0", "9.0", {"9.0": "d" * 64}))[0]


def test_engine_without_plugin_ignores_kernels_and_incomplete_record_is_refused():
    assert mismatches(_rec(plugin={}), Machine("10.13.0", "9.0")) == []
    with pytest.raises(ValueError, match="lacks tensorrt_version"):
        EngineRecord.from_dict({"path": "x", "sha256": "y"})
