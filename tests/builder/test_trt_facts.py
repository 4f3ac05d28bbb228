"""The cited TensorRT facts the static check judges by."""

from fastvar.builder.trt_facts import TOPK_MAX


def test_the_limit_is_the_exporters():
    from fastvar.export.artifact import TRT_TOPK_MAX

    assert TOPK_MAX == TRT_TOPK_MAX == 3840
