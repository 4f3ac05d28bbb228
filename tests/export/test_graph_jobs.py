"""Graphs exported by forked workers (issue 17): the same files as one process, errors and deaths told with
the graph they hit, an interrupted parallel export resumed, groups that keep shared forms together."""

from __future__ import annotations

import json
import os
import signal

import pytest
from conftest import export_tiny

from fastvar.export.graph_jobs import WorkerError, WorkerTraceback, can_fork, groups_sharing, run_groups
from fastvar.manifest import Artifact, ArtifactError

needs_fork = pytest.mark.skipif(not can_fork(), reason="export workers are forked, which this platform does not offer "
                                                       "safely (Linux only); the export runs in one process there")


def test_groups_keep_graphs_that_share_a_form_together_in_order():
    keys = {"a": {1, 2}, "b": {3}, "c": {2, 4}, "d": set(), "e": {4, 5}, "f": {3}}
    assert groups_sharing(list(keys), keys.__getitem__) == [["a", "c", "e"], ["b", "f"], ["d"]]


@needs_fork
def test_every_graph_runs_once_in_a_worker_and_is_reported_here():
    events: list[tuple[str, str]] = []
    results: dict[str, dict] = {}

    def on_done(name: str, payload: dict) -> None:
        events.append(("done", name))
        results[name] = payload

    groups = [["a", "b"], ["c"], ["d", "e", "f"]]
    run_groups(groups, lambda name: {"pid": os.getpid(), "twice": name * 2}, 2,
               lambda name: events.append(("start", name)), on_done)
    assert sorted(results) == list("abcdef") and all(r["twice"] == n * 2 for n, r in results.items())
    assert os.getpid() not in {r["pid"] for r in results.values()}  # the work ran in the workers
    assert len({r["pid"] for r in results.values()}) <= 2
    for name in results:  # each started before it was done, once
        assert events.count(("start", name)) == 1 and events.index(("start", name)) < events.index(("done", name))
    assert results["a"]["pid"] == results["b"]["pid"]  # a group stays in one worker (its forms are cached there)


class _Cycle:
    """Garbage that only the collector frees: holds an ONNX Runtime session (and so its thread pool)."""

    def __init__(self, session) -> None:
        self.session, self.me = session, self


@needs_fork
def test_garbage_with_threads_is_freed_before_the_fork_not_in_a_worker(tmp_path):
    """A caller's unreachable ONNX Runtime session, freed by a worker's collector, would wait forever on a
    thread pool that does not exist in the child (seen in the test suite). It is collected before the fork."""
    import gc

    import onnxruntime as ort
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])
    model = helper.make_model(helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 2
    gc.disable()  # keep the cycle alive until the export forks (the suite's sessions lived in fixtures)
    try:
        for _ in range(4):
            _Cycle(ort.InferenceSession(model.SerializeToString(), opts))

        def work(name: str) -> dict:
            gc.collect()  # what an export's tracing triggers
            return {"name": name}

        done: list[str] = []
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(60)
        try:
            run_groups([["a"], ["b"], ["c"]], work, 2, lambda _: None, lambda name, _: done.append(name))
        finally:
            signal.alarm(0)
    finally:
        gc.enable()
    assert sorted(done) == ["a", "b", "c"]


def _timeout(*_):
    raise TimeoutError("the workers hung (a destructor in a child waited on a thread of the parent)")


@needs_fork
def test_a_workers_error_is_raised_here_with_its_type_and_message():
    def work(name: str) -> dict:
        if name == "step_03":
            raise ValueError("step_03: kept count 7 is larger than the 4 tokens of the scale")
        return {}

    with pytest.raises(ValueError, match="kept count 7 is larger") as info:
        run_groups([["step_01"], ["step_03"], ["step_05"]], work, 2, lambda _: None, lambda *_: None)
    where = info.value.__cause__  # the worker's own traceback travels as the cause
    assert isinstance(where, WorkerTraceback) and "in work" in str(where) and "raise ValueError" in str(where)


@needs_fork
def test_a_killed_worker_is_reported_with_the_graph_it_held():
    def work(name: str) -> dict:
        if name == "decoder":
            os.kill(os.getpid(), signal.SIGKILL)
        return {}

    with pytest.raises(WorkerError, match=r"killed by signal 9\) while exporting decoder \(out of memory\?"):
        run_groups([["step_00"], ["decoder"]], work, 2, lambda _: None, lambda *_: None)


@needs_fork
@pytest.mark.slow
def test_parallel_export_writes_the_same_files_as_one_process(tmp_path):
    one = export_tiny(tmp_path / "one", "fastvar", res="256", jobs=1)
    two = export_tiny(tmp_path / "two", "fastvar", res="256", jobs=2)
    assert one["graphs"] == two["graphs"] and one["weights"] == two["weights"]
    assert list(one["graphs"]) == list(two["graphs"])  # the manifest lists graphs in definition order
    for name in one["graphs"]:
        a = (tmp_path / "one" / "graphs" / f"{name}.onnx").read_bytes()
        assert a == (tmp_path / "two" / "graphs" / f"{name}.onnx").read_bytes(), name
    Artifact.load(tmp_path / "two").verify()


@needs_fork
@pytest.mark.slow
def test_an_interrupted_parallel_export_resumes_with_what_the_workers_finished(tmp_path, monkeypatch):
    import fastvar.export.artifact as artifact

    real = artifact._export_one
    root = tmp_path / "a"
    marker = tmp_path / "failed_on"

    def failing(g, d, forms):
        if len(list((root / "graphs").glob("*.onnx"))) >= 3:  # the disk fills up once some graphs are written
            marker.write_text(d.name)
            raise OSError(28, "No space left on device")
        return real(g, d, forms)

    monkeypatch.setattr(artifact, "_export_one", failing)  # before the fork: the workers inherit it
    with pytest.raises(OSError, match="No space left"):
        export_tiny(root, "fastvar", res="256", jobs=2)
    failed = marker.read_text()
    m = json.loads((root / "manifest.json").read_text())
    assert m["complete"] is False and failed not in m["graphs"]
    done = set(m["graphs"])
    assert len(done) >= 3 and not list(root.rglob("*.tmp"))
    for name in done:  # what a worker finished is recorded as its file stands
        assert (root / m["graphs"][name]["file"]["path"]).is_file()
    with pytest.raises(ArtifactError, match="did not finish"):
        Artifact.load(root).verify()
    monkeypatch.setattr(artifact, "_export_one", real)
    again = export_tiny(root, "fastvar", res="256", jobs=2)
    assert failed in again["_rebuilt"] and not done & set(again["_rebuilt"])
    Artifact.load(root).verify()
