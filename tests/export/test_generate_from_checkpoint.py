"""Generating from a loaded checkpoint (hardening class 11): a model built on the meta device and loaded
from upstream's layout must run exactly as the same weights built in memory. Loading alone never showed the
HART diffusion schedule left without data; only generating did."""

import dataclasses

import pytest
import torch
from click.testing import CliRunner

from fastvar.cli import run_cmd
from fastvar.export.models.checkpoint import (
    build_random_infinity,
    build_random_vae,
    load_into_meta,
    save_state_dict,
)
from fastvar.export.models.factory import build_pair
from fastvar.export.models.hart_checkpoint import save_hart_folder, save_tokenizer_folder
from fastvar.export.models.infinity_config import preset


def _run(args: list[str]) -> None:
    r = CliRunner().invoke(run_cmd, args, catch_exceptions=False)
    assert r.exit_code == 0, r.output


def test_hart_release_folder_generates_the_same_image_as_its_weights(tmp_path):
    model, tok = build_pair("hart-tiny", random_init=True, seed=5)
    save_hart_folder(model, tmp_path / "rel" / "llm", ema=model)
    save_tokenizer_folder(tok, tmp_path / "rel" / "tokenizer")
    _run(["--model", "hart", "--ckpt", str(tmp_path / "rel"), "--seed", "0", "--out", str(tmp_path / "ckpt.png")])
    _run(["--model", "hart-tiny", "--random-init", "--weights-seed", "5", "--seed", "0",
          "--out", str(tmp_path / "mem.png")])
    assert (tmp_path / "ckpt.png").read_bytes() == (tmp_path / "mem.png").read_bytes()


def test_infinity_checkpoint_pair_generates_the_same_image_as_its_weights(tmp_path):
    cfg = preset("infinity-tiny")
    save_state_dict(build_random_infinity(cfg, 7), tmp_path / "t.pth")
    save_state_dict(build_random_vae(cfg.vae, 8), tmp_path / "v.pth", wrap_key="vae")
    common = ["--res", "256", "--seed", "1"]
    _run(["--model", "infinity", "--ckpt", str(tmp_path / "t.pth"), "--vae", str(tmp_path / "v.pth"), *common,
          "--out", str(tmp_path / "ckpt.png")])
    _run(["--model", "infinity-tiny", "--random-init", "--weights-seed", "7", *common,
          "--out", str(tmp_path / "mem.png")])
    assert (tmp_path / "ckpt.png").read_bytes() == (tmp_path / "mem.png").read_bytes()


@dataclasses.dataclass(frozen=True)
class _Constants:
    table: torch.Tensor


class _WithConstant(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(2, 2)
        self.consts = _Constants(torch.arange(3))  # made under the caller's default device, as the bug was


def test_a_constant_left_on_the_meta_device_is_refused_at_load_not_at_generation():
    sd = _WithConstant().state_dict()
    with torch.device("meta"):
        model = _WithConstant()
    with pytest.raises(RuntimeError, match=r"toy: 1 tensors .* never materialised \(first: consts\.table\)"):
        load_into_meta(model, sd, "toy")
