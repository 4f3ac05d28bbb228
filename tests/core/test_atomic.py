"""fastvar/atomic.py through fastvar-run: outputs replace only regular files; a FIFO or character device is
written through, a directory or socket is refused, and nothing else is ever renamed over."""

import os
import select
import socket
import stat
import threading

import numpy as np
from click.testing import CliRunner

from fastvar.cli import run_cmd

BASE = ["--model", "infinity-tiny", "--random-init", "--res", "256", "--tau", "1"]


def _drain(fd: int, chunks: list[bytes]) -> None:
    while True:
        ready, _, _ = select.select([fd], [], [], 0.1)
        if not ready:
            continue
        try:
            data = os.read(fd, 1 << 16)
        except BlockingIOError:
            continue
        if not data:
            return
        chunks.append(data)


def test_a_fifo_output_is_written_through_and_stays_a_fifo(tmp_path):
    fifo = tmp_path / "out.png"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    keep = os.open(fifo, os.O_WRONLY)  # holds the pipe open: the reader sees EOF only after we let go
    chunks: list[bytes] = []
    t = threading.Thread(target=_drain, args=(reader, chunks), daemon=True)
    t.start()
    try:
        r = CliRunner().invoke(run_cmd, [*BASE, "--out", str(fifo)])
    finally:
        os.close(keep)
        t.join(10)
        os.close(reader)
    assert r.exit_code == 0, r.output
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)  # not replaced by a regular file
    assert b"".join(chunks)[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_directories_and_sockets_are_refused_and_left_alone(tmp_path):
    d = tmp_path / "dir"
    d.mkdir()
    r = CliRunner().invoke(run_cmd, [*BASE, "--out", str(tmp_path / "a.png"), "--timings", str(d)])
    assert r.exit_code == 2 and f"{d} is a directory" in r.output
    path = tmp_path / "s.sock"
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(path))
        r = CliRunner().invoke(run_cmd, [*BASE, "--out", str(tmp_path / "b.png"), "--save-tokens", str(path)])
        assert r.exit_code == 2 and "is a socket; give a regular file path" in r.output
        assert stat.S_ISSOCK(os.lstat(path).st_mode)


def test_a_regular_file_is_still_replaced_atomically(tmp_path):
    out = tmp_path / "a.npz"
    out.write_bytes(b"old")
    r = CliRunner().invoke(run_cmd, [*BASE, "--out", str(tmp_path / "a.png"), "--save-tokens", str(out)])
    assert r.exit_code == 0, r.output
    assert "scale_00" in np.load(out).files
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "a.png"]

