"""Graphs exported by several processes at once.

Tracing is single-threaded Python, so on a machine of N cores an export uses one. After the model is built,
the export forks workers that share its weights copy-on-write (nothing is pickled or loaded again), and
each worker takes the next group of graphs from a queue, exports them and writes their files itself. The
parent only hands out groups, logs, and writes the manifest as results come back. Graphs whose parts share
forms (a step graph and its validation variant) form one group, so no form is traced twice.

Fork is used only where it is the platform's safe default (Linux); elsewhere, and with ``jobs=1``, the
same work runs in this process, in the same order of groups. Workers run torch on one thread each: they
are as many as the cores asked for, and forked children must not touch the parent's OpenMP pool.
"""

from __future__ import annotations

import gc
import multiprocessing as mp
import os
import signal
import sys
import traceback
from collections.abc import Callable, Hashable, Sequence
from multiprocessing import connection

MAX_DEFAULT_JOBS = 4


class WorkerError(RuntimeError):
    """A worker died without a word (killed, out of memory): its exit status and the graph it held."""


class WorkerTraceback(Exception):
    """Where in a worker an error was raised: the cause of the error re-raised here (its own traceback
    stops at this process)."""


def can_fork() -> bool:
    return sys.platform.startswith("linux") and "fork" in mp.get_all_start_methods()


def default_jobs() -> int:
    """One worker per core this process may use, at most ``MAX_DEFAULT_JOBS`` (each holds its own traces)."""
    if not can_fork():
        return 1
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    return max(1, min(cores, MAX_DEFAULT_JOBS))


def groups_sharing(names: Sequence[str], keys_of: Callable[[str], set[Hashable]]) -> list[list[str]]:
    """``names`` split into groups that share no key (graphs that share a form stay together), in order."""
    owner: dict[Hashable, int] = {}
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, name in enumerate(names):
        for k in keys_of(name):
            if k in owner:
                parent[root(i)] = root(owner[k])
            else:
                owner[k] = i
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return list(groups.values())


def run_groups(groups: list[list[str]], work: Callable[[str], dict], jobs: int,
               on_start: Callable[[str], None], on_done: Callable[[str, dict], None]) -> None:
    """Call ``work(name)`` for every name, group by group; ``on_start``/``on_done`` run in this process.

    ``groups`` are handed out in the order given (put the costly ones first). The first error, in this
    process or a worker, stops the rest and is raised here as it was raised there."""
    jobs = max(1, min(jobs, len(groups)))
    if jobs == 1 or not can_fork():
        for group in groups:
            for name in group:
                on_start(name)
                on_done(name, work(name))
        return
    ctx = mp.get_context("fork")
    tasks = ctx.SimpleQueue()  # written before any worker starts: no feeder thread here
    for i in range(len(groups)):
        tasks.put(i)
    for _ in range(jobs):
        tasks.put(None)
    workers, links = [], {}
    holding: dict[object, str] = {}
    left = sum(len(g) for g in groups)
    try:
        # What this process no longer holds is freed here, where the threads of its objects still run (an ONNX
        # Runtime session's pool: freed in a child, which has none, its destructor waits forever); the rest
        # is frozen, so a worker's collector never frees an object of ours.
        gc.collect()
        gc.freeze()
        try:
            for _ in range(jobs):
                reader, writer = ctx.Pipe(duplex=False)
                w = ctx.Process(target=_worker, args=(groups, work, tasks, writer), daemon=True)
                w.start()
                writer.close()
                workers.append(w)
                links[reader] = w
        finally:
            gc.unfreeze()
        while left:
            for conn in connection.wait(list(links)):
                w = links[conn]
                try:
                    kind, name, payload = conn.recv()
                except EOFError:  # the worker is gone: fine once the queue is empty, an error mid-graph
                    del links[conn]
                    w.join(timeout=10)
                    if w.exitcode != 0 or w.pid in holding:
                        raise _died(w, holding.get(w.pid)) from None
                    continue
                if kind == "start":
                    holding[w.pid] = name
                    on_start(name)
                elif kind == "done":
                    holding.pop(w.pid, None)
                    left -= 1
                    on_done(name, payload)
                else:
                    err, where = payload
                    raise err from WorkerTraceback(where)
        for w in workers:
            w.join(timeout=30)
    finally:
        _stop(workers)
        tasks.close()


def _died(w, held: str | None) -> WorkerError:
    code = w.exitcode
    what = f"killed by signal {-code}" if code is not None and code < 0 else f"exit status {code}"
    hint = " (out of memory? try fewer --jobs)" if code == -signal.SIGKILL else ""
    return WorkerError(f"an export worker stopped ({what}){' while exporting ' + held if held else ''}{hint}")


def _stop(workers: list) -> None:
    """Interrupt what still runs (after an error here or there): a worker's atomic write removes its temp
    file on the way out; one that does not stop in 10 s is killed."""
    for w in workers:
        if w.is_alive():
            os.kill(w.pid, signal.SIGINT)
    for w in workers:
        w.join(timeout=10)
        if w.is_alive():
            w.kill()
            w.join()


def _worker(groups: list[list[str]], work: Callable[[str], dict], tasks, out) -> None:
    """In a forked child: take groups until the sentinel, report each graph's start and result (sent at once,
    unbuffered, so the parent knows which graph a killed worker held)."""
    import torch

    torch.set_num_threads(1)
    try:
        while (i := tasks.get()) is not None:
            for name in groups[i]:
                out.send(("start", name, None))
                try:
                    payload = work(name)
                except BaseException as err:  # told to the parent, which raises it
                    out.send(("error", name, (_picklable(err), traceback.format_exc())))
                    return
                out.send(("done", name, payload))
    except KeyboardInterrupt:  # stopped by the parent between graphs: nothing to report
        return


def _picklable(err: BaseException) -> BaseException:
    """The error itself when it survives pickling (its type and message reach the user unchanged)."""
    import pickle

    try:
        pickle.loads(pickle.dumps(err))
        return err
    except Exception:
        return RuntimeError(f"{type(err).__name__}: {err}")
