"""Command-line entry points. Each command is a thin shell over functions that the tests call too."""

from __future__ import annotations

import math
import sys

import click

from fastvar.family import family, names

MODEL_NAMES = sorted(n for f in names() for n in family(f).model_names())
# each family's sampling defaults (upstream's): Infinity cfg 4, tau 0.5; HART cfg 4.5, no tau
INFINITY, HART = family("infinity").sampling, family("hart").sampling
DEFAULT_CFG, HART_DEFAULT_CFG, DEFAULT_TAU = INFINITY.cfg, HART.cfg, INFINITY.tau
SEED = click.IntRange(0, 2**63 - 1)


class FiniteRange(click.FloatRange):
    """click's FloatRange lets NaN through (every comparison with it is false): refuse it, and infinities."""

    def convert(self, value, param, ctx):
        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


def _fail(message: str) -> None:
    click.echo(f"error: {message}", err=True)
    sys.exit(2)


def _fail_rows(err) -> None:
    """A run whose rows went non-finite: the good rows' files, then one error per failed row, exit 2."""
    if err.written:
        click.echo(f"wrote {', '.join(str(p) for p in err.written)}")
    for line in err.lines:
        click.echo(f"error: {line}", err=True)
    sys.exit(2)


CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def model_options(default_model: str):
    """The options that say which model, weights, resolution, schedule, precision and batch: shared by
    the direct reference run and the export, so they read and behave the same in both."""
    options = [
        click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default=default_model,
                     show_default=True, help="Model family and size (infinity = infinity-2b). *-tiny is a small "
                     "random-weight preset for CPU work. hart = hart-0.7b."),
        click.option("--ckpt", type=click.Path(), help="Transformer checkpoint in upstream layout (.pth, "
                     ".safetensors, or a folder / index.json of shards). Dimensions are read from its tensor shapes. "
                     "HART: upstream's release folder (hart-0.7b-1024px, holding llm/ and tokenizer/)."),
        click.option("--vae", "vae_path", type=click.Path(), help="VAE checkpoint in upstream layout "
                     "({'vae': state_dict} or a bare decoder state dict). Not for HART (its tokenizer is in --ckpt)."),
        click.option("--random-init", is_flag=True, help="Seeded random weights instead of checkpoints."),
        click.option("--depth", type=int, help="With --random-init: override the preset's depth (real width, "
                     "fewer blocks)."),
        click.option("--weights-seed", type=SEED, default=0, show_default=True, help="Seed of --random-init weights."),
        click.option("--res", default="1024", show_default=True, help="Resolution tier: 256, 512, 768, 1024 "
                     "(0.06M/0.25M/0.60M/1M) or 2048 (zero-shot 2K)."),
        click.option("--aspect", default="1:1", show_default=True, help="Height:width; the nearest upstream aspect "
                     "template is used and reported."),
        click.option("--schedule", default="fastvar", show_default=True, help="fastvar (the paper's schedule), "
                     "none, or SIDE:FRACTION,... e.g. 32:0.4,40:0.5,48:1,64:1 (1 skips the step)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16"]), default="fp32", show_default=True,
                     help="fp32, or bf16 as upstream runs it (bf16 block matmuls; fp32 residual, norms, RoPE, "
                     "head); in the graphs, precision is expressed by their types."),
        click.option("--batch", type=int, default=1, show_default=True, help="Images per call (CFG doubles the "
                     "rows inside)."),
    ]

    def apply(fn):
        for opt in reversed(options):
            fn = opt(fn)
        return fn

    return apply


@click.command(context_settings=CONTEXT)
@click.argument("artifact", required=False, type=click.Path(file_okay=False))
@click.option("--backend", type=click.Choice(["auto", "tensorrt", "onnxruntime", "torch"]), default="auto",
              show_default=True, help="With ARTIFACT: which runtime runs it (torch = the PyTorch reference).")
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default="cpu", show_default=True,
              help="With ARTIFACT and onnxruntime: CPU, or the CUDA provider (onnxruntime-gpu). TensorRT always "
              "runs on the GPU.")
@model_options("infinity-tiny")
@click.option("--text-embeddings", type=click.Path(), help="Text encoder states .npy (L, D) or (B, L, D). "
              "Without it a fixed seeded embedding stands in.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the sampling noise; image i of the "
              "batch uses seed + i, so its noise does not depend on the others.")
@click.option("--cfg", type=float, default=None, help=f"Classifier-free guidance scale [default: {DEFAULT_CFG:g}, "
              f"HART {HART_DEFAULT_CFG:g}; {INFINITY.unguided_cfg:g} (HART: {HART.unguided_cfg:g}) for an artifact "
              "exported without guidance].")
@click.option("--more-smooth/--no-more-smooth", default=None, help="HART: feed back the Gumbel-soft codebook "
              "mixture (upstream's default, on) or the sampled codebook rows.")
@click.option("--tau", type=float, default=None, help=f"Sampling temperature [default: {DEFAULT_TAU:g}; HART samples "
              "without one].")
@click.option("--out", type=click.Path(), default="out.png", show_default=True, help="Output PNG path.")
@click.option("--save-tokens", type=click.Path(), help="Save each executed scale's tokens: npz scale_XX, Infinity's "
              "bits (B,h,w,bits) uint8, HART's codebook indices (B,h,w) int32.")
@click.option("--save-logits", type=click.Path(), help="Save each executed scale's CFG-mixed logits after tau.")
@click.option("--force-tokens", type=click.Path(), help="Teacher forcing: npz in --save-tokens layout replaces "
              "sampling at every scale it covers.")
@click.option("--timings", type=click.Path(), help="Write where the time went (load_s, loop_s, decode_s, steps).")
@click.option("--max-memory", type=FiniteRange(min=0, min_open=True), help="With ARTIFACT: GiB of host memory the "
              "run may use, instead of what this machine reports (the cgroup's limit less its use, else "
              "MemAvailable). A run whose memory plan exceeds it is refused before anything is loaded.")
@click.option("--plan", "plan_only", is_flag=True, help="With ARTIFACT: print the memory plan of this run (the "
              "backend and device it would use) and whether it fits, then exit.")
@click.pass_context
def run_cmd(ctx, artifact, backend, device, model_name, ckpt, vae_path, random_init, depth, weights_seed, res, aspect,
            schedule, precision, batch, text_embeddings, seed, cfg, more_smooth, tau, out, save_tokens, save_logits,
            force_tokens, timings, max_memory, plan_only) -> None:
    """Generate images: with ARTIFACT (a fastvar-export directory) run its compiled graphs; without it,
    run the PyTorch reference directly (no compilation needed).

    \b
    Examples:
      fastvar-run engines/tiny --seed 0 --out a.png
      fastvar-run --model infinity-tiny --random-init --res 1024 --seed 0 --out a.png
      fastvar-run --model hart-tiny --random-init --seed 0 --out h.png

    An image whose logits go NaN or infinite (e.g. a --cfg so large they overflow) is not written: the
    other images of the batch are, an error names each failed image, its seed and the first scale that
    went bad, and the exit status is 2. --save-tokens/--save-logits still hold every image's rows.
    """
    from fastvar.runtime.artifact_run import run_artifact
    from fastvar.runtime.nonfinite import NonFiniteRows
    from fastvar.runtime.reference_run import RunOptions, run_reference

    if artifact is not None:
        model_flags = ["model_name", "ckpt", "vae_path", "random_init", "depth", "weights_seed", "res", "aspect",
                       "schedule", "precision", "batch"]
        given = [f"--{n.replace('_name', '').replace('_path', '').replace('_', '-')}" for n in model_flags
                 if ctx.get_parameter_source(n) == click.core.ParameterSource.COMMANDLINE]
        if given:
            _fail(f"{', '.join(given)}: the artifact {artifact} fixes the model, resolution, schedule, precision "
                  "and batch; these flags belong to the direct reference run (without ARTIFACT)")
        try:
            if plan_only:
                from fastvar.runtime.artifact_run import print_plan

                print_plan(artifact, backend, device, max_memory, log=click.echo)
                return
            report = run_artifact(artifact, out, backend=backend, text_embeddings=text_embeddings, seed=seed, cfg=cfg,
                                  tau=tau, save_tokens=save_tokens, save_logits=save_logits,
                                  force_tokens=force_tokens, timings=timings, device=device,
                                  more_smooth=more_smooth, max_memory=max_memory, log=click.echo)
        except NonFiniteRows as err:
            _fail_rows(err)
        except (ValueError, OSError, ImportError) as err:
            _fail(str(err))
        click.echo(f"wrote {', '.join(str(p) for p in report['images'])}")
        return
    if max_memory is not None or plan_only:
        _fail("--max-memory and --plan need an ARTIFACT directory (the plan is read from its graphs); for a model "
              "before export use fastvar-export --plan")
    if ctx.get_parameter_source("backend") == click.core.ParameterSource.COMMANDLINE and backend != "torch":
        _fail("--backend needs an ARTIFACT directory (fastvar-export writes one); without it fastvar-run runs the "
              "PyTorch reference")
    if batch < 1:
        _fail(f"--batch must be >= 1, got {batch}")
    opts = RunOptions(model=model_name, ckpt=ckpt, vae=vae_path, random_init=random_init, depth=depth,
                      weights_seed=weights_seed, res=res, aspect=aspect, schedule=schedule, precision=precision,
                      batch=batch, text_embeddings=text_embeddings, seed=seed, cfg=cfg, tau=tau,
                      more_smooth=more_smooth)
    try:
        report = run_reference(opts, out=out, save_tokens=save_tokens, save_logits=save_logits,
                               force_tokens=force_tokens, timings=timings, log=click.echo)
    except NonFiniteRows as err:
        _fail_rows(err)
    except (ValueError, OSError) as err:
        _fail(str(err))
    click.echo(f"wrote {', '.join(str(p) for p in report['images'])}")


@click.command(context_settings=CONTEXT)
@model_options("infinity")
@click.option("--text-len", type=int, default=64, show_default=True,
              help="Text bucket: prompts up to this many tokens (padded and masked). HART always takes 300.")
@click.option("--guidance/--no-guidance", default=True, show_default=True,
              help="Classifier-free guidance rows in the graphs; --no-guidance exports a cfg=1 artifact (batch B).")
@click.option("--backend", type=click.Choice(["tensorrt", "onnxruntime", "onnx"]), default="onnxruntime",
              show_default=True, help="What the graphs are for: tensorrt (then fastvar-build), onnxruntime, onnx.")
@click.option("--restore-op", type=click.Choice(["auto", "custom", "custom-add", "standard"]), default="auto",
              show_default=True, help="FastVARRestore as one custom node (TensorRT plugin), as FastVARRestoreAdd "
              "(custom-add: fused with the residual add, one pass less over memory), or spelled with standard ONNX "
              "ops; auto: standard for onnxruntime, custom otherwise.")
@click.option("--attention-budget", type=FiniteRange(min=0), help="MiB that decomposed attention's scores may "
              "hold at once: larger steps split their queries into static chunks (same result) [default: 512 for "
              "onnxruntime; 0 (never) for tensorrt/onnx, whose attention TensorRT fuses].")
@click.option("--plan", "plan_only", is_flag=True, help="Print the memory plan and exit.")
@click.option("--gpu-memory", type=FiniteRange(min=0, min_open=True), help="GiB of the target GPU: refuse a "
              "plan that does not fit, saying by how much.")
@click.option("--out", type=click.Path(file_okay=False), help="Artifact directory [default: under engines/].")
@click.option("--force", is_flag=True, help="Rebuild everything, even what is up to date.")
@click.option("--allow-nonempty", is_flag=True, help="Let --out name a non-empty directory that is not an artifact "
              "(its other files are left alone).")
@click.option("--wait", is_flag=True, help="If another process is writing the artifact, wait for it instead of "
              "failing at once.")
@click.option("--jobs", type=click.IntRange(min=1), help="Processes exporting graphs at once, sharing the model's "
              "weights (Linux) [default: one per core, at most 4].")
def export_cmd(model_name, ckpt, vae_path, random_init, depth, weights_seed, res, aspect, schedule, precision, batch,
               text_len, guidance, backend, restore_op, attention_budget, plan_only, gpu_memory, out, force,
               allow_nonempty, wait, jobs) -> None:
    """Compile a model for one resolution and aspect into per-scale static ONNX graphs, one weight store and
    a manifest.

    Example: fastvar-export --model infinity-tiny --random-init --res 1024 --out engines/tiny
    """
    from fastvar.export.artifact import ExportOptions, export, plan_memory

    opts = ExportOptions(model=model_name, ckpt=ckpt, vae=vae_path, random_init=random_init, depth=depth,
                         weights_seed=weights_seed, res=res, aspect=aspect, schedule=schedule, precision=precision,
                         batch=batch, text_len=text_len, guidance=guidance, backend=backend, restore_op=restore_op,
                         out=out, force=force, gpu_memory=gpu_memory, attention_budget_mib=attention_budget,
                         allow_nonempty=allow_nonempty, wait=wait, jobs=jobs)
    try:
        if plan_only:
            mem = plan_memory(opts)
            click.echo(mem.table())
            from fastvar.runtime.memory_budget import formula_figures, plan_run

            run_on = ("onnxruntime", "cpu") if backend == "onnxruntime" else ("tensorrt", "cuda")
            for p in plan_run(formula_figures(mem), *run_on):
                if p is not None:
                    click.echo(p.table())
            click.echo("the run's plan before export uses the formula estimates above; fastvar-run DIR --plan "
                       "reads the exported graphs")
            if gpu_memory is not None:
                mem.check_fits(gpu_memory)
                click.echo(f"fits in {gpu_memory:g} GiB")
            return
        manifest = export(opts, log=click.echo)
        if backend == "tensorrt":
            from fastvar.builder.engine_builder import build_engines

            build_engines(manifest["_root"], log=click.echo)
    except (ValueError, OSError, ImportError) as err:
        _fail(str(err))


@click.command(context_settings=CONTEXT)
@click.option("--out", type=click.Path(file_okay=False), default="engines/demo", show_default=True,
              help="Where the artifact, the image and the report go.")
def demo_cmd(out) -> None:
    """The embedded default: export a random-weight infinity-tiny at 1024, run it with ONNX Runtime, check it
    against the PyTorch reference (teacher-forced logits), print the image and report paths."""
    from fastvar.demo import ParityError, run_demo

    try:
        run_demo(out, log=click.echo)
    except ParityError as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except (ValueError, OSError, ImportError) as err:
        _fail(str(err))


@click.command(context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--optimization-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="TensorRT builder optimisation level (higher: longer builds, possibly faster engines).")
@click.option("--workspace", type=click.IntRange(min=1), help="MiB the builder may use for scratch [default: "
              "TensorRT's, the whole GPU].")
@click.option("--timing-cache", type=click.Path(dir_okay=False), help="Timing cache shared by every build [default: "
              "ARTIFACT/engines/timing.trt<version>.sm<cc>.cache]; it is specific to one GPU model.")
@click.option("--graph", "graphs", multiple=True, help="Build only this graph (repeatable): condition, step_07, "
              "decoder, ...")
@click.option("--tf32", is_flag=True, help="Let TensorRT use TF32 for fp32 matmuls (faster; about 1e-3 relative "
              "error, beyond fastvar-validate's fp32 tolerance). Off by default.")
@click.option("--validation", is_flag=True, help="Also build the validation variants of pruned steps (for "
              "fastvar-validate --backend tensorrt).")
@click.option("--check-only", is_flag=True, help="Run the static TensorRT compatibility check (any machine) and stop.")
@click.option("--force", is_flag=True, help="Rebuild every engine, even those whose record is current.")
@click.option("--wait", is_flag=True, help="If another process is writing the artifact, wait for it instead of "
              "failing at once.")
def build_cmd(artifact, optimization_level, workspace, timing_cache, graphs, tf32, validation, check_only,
              force, wait) -> None:
    """Build TensorRT engines for the graphs of ARTIFACT on this machine's GPU, and record in the manifest
    what each was built with (TensorRT version, compute capability, plugin kernel hash, builder settings).

    Every graph first passes a static compatibility check (runs anywhere, also with --check-only); then
    only stale engines are rebuilt: a changed graph, another TensorRT or GPU, a changed plugin kernel.

    Example: fastvar-build engines/infinity-2b-1024 && fastvar-run engines/infinity-2b-1024 --backend tensorrt
    """
    from fastvar.builder.engine_builder import BuildError, BuildOptions, build_engines
    from fastvar.builder.onnx_check import IncompatibleGraphs, check_artifact
    from fastvar.manifest import Artifact

    try:
        if check_only:
            art = Artifact.load(artifact)
            art.verify()  # exactly as fastvar-run: a half-written or altered artifact is not checked, refused
            found = check_artifact(art)
            bad = {g: v for g, v in found.items() if v}
            for g, violations in bad.items():
                for v in violations:
                    click.echo(f"{g}: {v.node or '-'} ({v.op or '-'}) [{v.rule}] {v.message}", err=True)
            if bad:
                sys.exit(1)
            click.echo(f"{len(found)} graphs pass the TensorRT compatibility check")
            return
        opts = BuildOptions(optimization_level=optimization_level, workspace_mib=workspace, timing_cache=timing_cache,
                            force=force, graphs=tuple(graphs), validation=validation, tf32=tf32, wait=wait)
        build_engines(artifact, opts, log=click.echo)
    except (IncompatibleGraphs, BuildError) as err:
        click.echo(f"error: {err}", err=True)
        sys.exit(1)
    except (ValueError, OSError, ImportError) as err:
        _fail(str(err))


@click.command(context_settings=CONTEXT)
@click.argument("artifact", type=click.Path(file_okay=False))
@click.option("--report", type=click.Path(dir_okay=False), help="Write every figure to this JSON file.")
@click.option("--tol", multiple=True, metavar="PREFIX=VALUE",
              help="Tolerance (relative to each output's scale) for outputs whose name starts with PREFIX, e.g. "
              "--tol logits=1e-4 --tol new_k=1e-5. Defaults: fp32 1e-4 (image 1e-3, bits: 0.1% flipped).")
@click.option("--regenerate-goldens", is_flag=True, help="Record the goldens again from the PyTorch reference.")
@click.option("--no-e2e", is_flag=True, help="Per-graph checks only (skip the end-to-end generation check).")
@click.option("--backend", type=click.Choice(["onnxruntime", "tensorrt"]), default="onnxruntime", show_default=True,
              help="What is judged: the ONNX graphs (ONNX Runtime, CPU) or the TensorRT engines of fastvar-build "
              "(build with --validation so pruned steps' validation variants have engines too).")
def validate_cmd(artifact, report, tol, regenerate_goldens, no_e2e, backend) -> None:
    """Prove that every graph of ARTIFACT computes what the PyTorch reference computes, with Polygraphy,
    then check the whole chain end to end. Exit 0: all within tolerance; 1: not (names the graph and
    output); 2: bad usage or a missing/altered file.

    Goldens (inputs and outputs of every graph from a real reference generation) are written to
    ARTIFACT/goldens on the first run.
    """
    from fastvar.validate.run import ValidationUsageError, validate

    try:
        code, _ = validate(artifact, report=report, tol=list(tol), regenerate=regenerate_goldens, e2e=not no_e2e,
                           backend=backend, log=click.echo)
    except (ValidationUsageError, ValueError, OSError, ImportError) as err:
        _fail(str(err))
    sys.exit(code)


def _csv(text: str) -> tuple[str, ...]:
    return tuple(p.strip() for p in text.split(",") if p.strip())


@click.command(context_settings=CONTEXT)
@click.option("--model", "model_name", type=click.Choice(MODEL_NAMES), default="infinity-2b", show_default=True)
@click.option("--depth", type=int, default=2, show_default=True,
              help="Blocks of the random-weight model: the real width and heads, fewer blocks (CPU-sized).")
@click.option("--res", default="1024", show_default=True,
              help="Resolution(s), comma-separated; several make a sweep (e.g. 512,1024,2048).")
@click.option("--aspect", default="1:1", show_default=True)
@click.option("--schedules", default="none,fastvar", show_default=True,
              help="Schedules to compare, comma-separated (explicit specs separated by ';').")
@click.option("--backends", default="onnxruntime,torch", show_default=True, help="Backends, comma-separated: "
              "onnxruntime, torch, tensorrt (exports for TensorRT and builds the engines first; a GPU with TensorRT).")
@click.option("--runs", type=int, default=3, show_default=True, help="Timed runs per configuration.")
@click.option("--warmup", type=int, default=1, show_default=True, help="Untimed runs first.")
@click.option("--text-len", type=int, help="Infinity: the text bucket the artifacts are exported with "
              "[default: 64]. HART always takes its 300-token context (another value is refused).")
@click.option("--threads", type=int, help="Intra-op threads for PyTorch (ONNX Runtime uses its default).")
@click.option("--engines", default="engines/bench", show_default=True, help="Where the benchmark's artifacts live.")
@click.option("--out", default="bench", show_default=True, help="Where bench.json, bench.txt and plots go.")
def bench_cmd(model_name, depth, res, aspect, schedules, backends, runs, warmup, text_len, threads, engines,
              out) -> None:
    """Measure schedules and backends side by side in one run: per-step and end-to-end latency, speedups
    against the compute ceiling, FLOP rate against the machine's GEMM peak, runtime overhead, KV and peak
    memory, and with several resolutions the cost exponent.

    Example: fastvar-bench --model infinity-2b --depth 2 --res 512,1024 --runs 3

    HART (1024 px, 1:1 only): fastvar-bench --model hart-0.7b --depth 2 --runs 3
    """
    from fastvar.runtime.bench import BenchOptions, run_bench

    specs = tuple(p.strip() for p in schedules.split(";")) if ";" in schedules else _csv(schedules)
    opts = BenchOptions(model=model_name, depth=depth, resolutions=_csv(res), aspect=aspect, schedules=specs,
                        backends=_csv(backends), runs=runs, warmup=warmup, text_len=text_len, threads=threads,
                        engines=engines, out=out)
    try:
        run_bench(opts, log=click.echo)
    except (ValueError, OSError, ImportError) as err:
        _fail(str(err))


if __name__ == "__main__":  # pragma: no cover
    run_cmd()
