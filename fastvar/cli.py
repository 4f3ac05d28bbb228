"""Command-line entry points. Each command is a thin shell over functions that the tests call too."""

from __future__ import annotations

import sys

import click

from fastvar.export.models.infinity_config import ALIASES, PRESETS

MODEL_NAMES = sorted([*PRESETS, *ALIASES])
# Upstream's Infinity-2B inference defaults (scripts/infer.sh): cfg 4, tau 0.5.
DEFAULT_CFG = 4.0
DEFAULT_TAU = 0.5
SEED = click.IntRange(0, 2**63 - 1)


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="infinity-tiny", show_default=True,
              help="Model family and size. *-tiny is a small random-weight preset for CPU work.")
@click.option("--ckpt", type=click.Path(), help="Transformer checkpoint in upstream layout (.pth, .safetensors, "
              "or a folder / index.json of shards). Dimensions are read from its tensor shapes.")
@click.option("--vae", "vae_path", type=click.Path(), help="VAE checkpoint in upstream layout ({'vae': state_dict}).")
@click.option("--random-init", is_flag=True, help="Seeded random weights instead of checkpoints.")
@click.option("--depth", type=int, help="With --random-init: override the preset's depth (real width, fewer blocks).")
@click.option("--weights-seed", type=SEED, default=0, show_default=True, help="Seed of --random-init weights.")
@click.option("--res", default="1024", show_default=True,
              help="Resolution tier: 256, 512, 768, 1024 (0.06M/0.25M/0.60M/1M) or 2048 (zero-shot 2K).")
@click.option("--aspect", default="1:1", show_default=True,
              help="Height:width; the nearest upstream aspect template is used and reported.")
@click.option("--schedule", default="fastvar", show_default=True,
              help="fastvar (the paper's schedule), none, or SIDE:FRACTION,... e.g. 32:0.4,40:0.5,48:1,64:1 "
              "(1 skips the step).")
@click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
              help="fp32, or bf16 as upstream runs it (bf16 block matmuls; fp32 residual, norms, RoPE, head).")
@click.option("--batch", type=int, default=1, show_default=True, help="Images per call (CFG doubles it inside).")
@click.option("--text-embeddings", type=click.Path(), help="Text encoder states .npy (L, D) or (B, L, D). "
              "Without it a fixed seeded embedding stands in.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the sampling noise.")
@click.option("--cfg", type=float, default=DEFAULT_CFG, show_default=True, help="Classifier-free guidance scale.")
@click.option("--tau", type=float, default=DEFAULT_TAU, show_default=True, help="Sampling temperature.")
@click.option("--out", type=click.Path(), default="out.png", show_default=True, help="Output PNG path.")
@click.option("--save-tokens", type=click.Path(), help="Save each executed scale's bits: npz scale_XX (B,h,w,bits).")
@click.option("--save-logits", type=click.Path(), help="Save each executed scale's CFG-mixed logits after tau.")
@click.option("--force-tokens", type=click.Path(), help="Teacher forcing: npz in --save-tokens layout replaces "
              "sampling at every scale it covers.")
@click.option("--timings", type=click.Path(), help="Write where the time went (load_s, loop_s, decode_s, steps).")
def run_cmd(model_name, ckpt, vae_path, random_init, depth, weights_seed, res, aspect, schedule, precision, batch,
            text_embeddings, seed, cfg, tau, out, save_tokens, save_logits, force_tokens, timings) -> None:
    """Generate images with the PyTorch reference (no compilation needed).

    Example: fastvar-run --model infinity-tiny --random-init --res 1024 --seed 0 --out a.png
    """
    from fastvar.runtime.generate import RunOptions, run_reference

    if batch < 1:
        _fail(f"--batch must be >= 1, got {batch}")
    opts = RunOptions(model=model_name, ckpt=ckpt, vae=vae_path, random_init=random_init, depth=depth,
                      weights_seed=weights_seed, res=res, aspect=aspect, schedule=schedule, precision=precision,
                      batch=batch, text_embeddings=text_embeddings, seed=seed, cfg=cfg, tau=tau)
    try:
        report = run_reference(opts, out=out, save_tokens=save_tokens, save_logits=save_logits,
                               force_tokens=force_tokens, timings=timings, log=click.echo)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(f"wrote {', '.join(str(p) for p in report['images'])}")


if __name__ == "__main__":  # pragma: no cover
    run_cmd()
