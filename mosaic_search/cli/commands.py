"""The `mosaic` command: a thin Typer shell over the library (tables in views.py, terminal plumbing in terminal.py)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Annotated, Optional

import typer

from .. import __version__
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, MosaicError, UsageError
from ..operators import OPS_HELP
from ..quality import evaluation as eval_defaults
from ..recovery import distill as distill_defaults  # defaults shown in --help; the module imports no torch at top level
from . import views
from .terminal import NOTHING_WRITTEN, console, err, fail, interruptible, progress, rank0

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hardware-aware architecture search: profile -> score -> solve -> build -> distill.")

# Option types, declared once and shared by every command.
ModelOpt = Annotated[str, typer.Option("--model", "--teacher", "-m",
                                       help="Hub id, local directory, or 'tiny' (the embedded teacher).")]
TeacherOpt = Annotated[Optional[str], typer.Option(help="Teacher (default: the one the plan records).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
OutOpt = Annotated[Optional[str], typer.Option(
    "--out", "-o", help="Output path (default: under profiles/ or layer_plans/).")]
ModelOutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help=(
    "Model directory (default: build/<model>-<pattern> for build, <model>-distilled for distill)."))]
OpsOpt = Annotated[Optional[str], typer.Option("--ops", help=OPS_HELP + " Default: every operator.")]
WorkloadOpt = Annotated[Optional[list[str]], typer.Option(help=(
    "A workload (repeatable). profile: phase:tokens[:bN], e.g. prefill:32k or decode:96k:b8 (default: the device's "
    "set); solve: only this workload of the profile, by name, e.g. decode-b1-c96k; bench: a spec or name (default: "
    "those the plan predicts)."))]
ImageTokensOpt = Annotated[int, typer.Option(
    "--image-tokens", help="VLM only: TTFT also encodes one image of this many tokens per sequence (as profiled).")]
DeviceOpt = Annotated[str, typer.Option(help="cpu or cuda.")]
ResumeOpt = Annotated[bool, typer.Option(help=(
    "Continue an interrupted run: score keeps the finished items that still match, distill continues from the last "
    "checkpoint of the same run."))]
OverwriteOpt = Annotated[bool, typer.Option(help="Replace the output at --out (plan / sweep files, model directory).")]
AllowStaleOpt = Annotated[bool, typer.Option(help="Use a profile, table or plan made for another model or device.")]
TableOpt = Annotated[Optional[str], typer.Option(
    "--table", help="Also write the rows (to_frame) as PATH.csv or PATH.parquet (parquet needs pyarrow).")]


def _version(value: bool):
    if value:
        console.print(f"mosaic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")] = None):
    """Hardware-aware architecture search: profile -> score -> solve -> build -> distill."""


def _table_writer(path):
    """Check a --table path before any work; return what writes an artifact's rows there (nothing without one)."""
    if not path:
        return lambda artifact: None
    from ..artifacts import frames

    frames.check_table(path)
    return lambda artifact: frames.write_table(artifact, path)


# The commands, in pipeline order: `mosaic --help` lists them in the order they are defined here.
@app.command()
def profile(model: ModelOpt = "tiny", device: DeviceOpt = "cpu", ops: OpsOpt = None, workload: WorkloadOpt = None,
            out: OutOpt = None, validate: Annotated[bool, typer.Option(
                help="Also time whole models (teacher and two mixes) in the same passes and report predicted "
                     "vs measured latency.")] = False,
            layers_per_sample: Annotated[Optional[int], typer.Option(
                help="Layers holding the candidate, run in sequence per sample (default: all on cpu, 1 on cuda).")
            ] = None,
            image_tokens: ImageTokensOpt = 0, table_out: TableOpt = None, seed: SeedOpt = 0,
            as_json: JsonOpt = False):
    """Stage 1: time every candidate mixer as a whole decoder layer on this device."""
    from ..latency import profiler

    save_table = _table_writer(table_out)  # a bad --table fails before the profile runs, not after
    with interruptible(lambda: f"{NOTHING_WRITTEN}: a profile is saved only once complete"), \
            progress("profiling") as tick:
        prof = profiler.profile(model=model, device=device, ops=ops, workloads=workload, out=out, seed=seed,
                                progress=tick, image_tokens=image_tokens, layers_per_sample=layers_per_sample,
                                validate=validate)
    save_table(prof)
    views.profile(prof, profiler.profile_path(model, prof.header.env, out), table_out, as_json)


@app.command()
def score(teacher: ModelOpt = "tiny",
          data: Annotated[Optional[str], typer.Option(
              help="A .txt, .jsonl or .parquet file (chat rows may hold images for a VLM teacher), or 'self' "
                   "(default: tiny's calibration.txt, held-out text with recall; else self).")] = None,
          ops: OpsOpt = None,
          tokens: Annotated[Optional[int], typer.Option(
              help="Calibration tokens scored (default 8192, at least two windows).")] = None,
          seq_len: Annotated[Optional[int], typer.Option(
              "--seq-len", help="Tokens per window (default 512, or twice the largest SWA window).")] = None,
          align_steps: Annotated[Optional[int], typer.Option(
              "--align-steps", help="Local alignment steps of gdn/kda/mla (default 40; 0: the raw init).")] = None,
          out: OutOpt = None, resume: ResumeOpt = False, device: DeviceOpt = "cpu",
          device_map: Annotated[Optional[str], typer.Option(help="e.g. auto: spread a large teacher over GPUs.")]
          = None,
          table_out: TableOpt = None, seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 2: KL to the teacher of every (layer, operator) swap, after local alignment (torchrun splits items)."""
    from ..quality import scorer

    save_table, show, start = _table_writer(table_out), rank0(), time.perf_counter()
    path = scorer.table_path(teacher, out)
    from ..quality.library import ItemStore

    kept = lambda: (f"the finished items are kept beside {path}; --resume continues"  # noqa: E731
                    if any(log.stat().st_size for log in ItemStore(path).logs())
                    else f"{NOTHING_WRITTEN} (no item finished yet)")
    with interruptible(kept), \
            progress("scoring", show) as tick:
        table = scorer.score(teacher, data=data, ops=ops, tokens=tokens, seq_len=seq_len, align_steps=align_steps,
                             out=out, resume=resume, seed=seed, device=device, device_map=device_map, progress=tick)
    if show:
        save_table(table)
        views.score(table, path, time.perf_counter() - start, table_out, as_json)


def _check_solve_flags(strategy, sweep, plot, solutions, min_distance, table_out) -> None:
    """The flag combinations `solve` refuses: each library function takes only its own keywords."""
    if plot and not sweep:
        raise UsageError("--plot needs --sweep")
    if solutions != 1 and (sweep or strategy != "mip"):
        raise UsageError("--solutions needs the mip strategy and no --sweep")
    if min_distance != 1 and solutions == 1:
        raise UsageError(f"--min-distance {min_distance} needs --solutions 2 or more")
    if table_out and solutions != 1:
        raise UsageError("--table writes one plan or one sweep; drop --solutions")


@app.command()
def solve(speedup: Annotated[Optional[float], typer.Option(help="Target speedup for every workload in scope.")] = None,
          profile: Annotated[Optional[str], typer.Option(help="Latency profile (default: newest).")] = None,
          scores: Annotated[Optional[str], typer.Option(help="Sensitivity table (default: newest matching).")] = None,
          workload: WorkloadOpt = None,
          ttft_speedup: Annotated[Optional[float], typer.Option(help="Target for prefill workloads.")] = None,
          tpot_speedup: Annotated[Optional[float], typer.Option(help="Target for decode workloads.")] = None,
          max_cache_bytes: Annotated[Optional[int], typer.Option(help="Bound on the generation cache.")] = None,
          cache_batch: Annotated[int, typer.Option(help="Sequences the cache bound holds.")] = 1,
          cache_context: Annotated[Optional[int], typer.Option(help="Context of the cache bound.")] = None,
          max_memory: Annotated[Optional[float], typer.Option(
              help="Bound on weights + cache at --cache-batch and --cache-context: bytes, or at most 1 a fraction of "
                   "the teacher's.")] = None,
          throughput_speedup: Annotated[Optional[float], typer.Option(
              help="Serving: batch / TPOT at least this times the teacher's within --memory (chooses the batch).")
          ] = None,
          memory: Annotated[Optional[float], typer.Option(
              help="Serving: bytes for weights + cache (at most 1: a fraction of the teacher's).")] = None,
          context: Annotated[Optional[int], typer.Option(help="Serving: the context the cache holds.")] = None,
          ops: OpsOpt = None,
          pin: Annotated[Optional[list[str]], typer.Option(help="LAYER=OP, e.g. 0=gqa (repeatable).")] = None,
          min_count: Annotated[Optional[list[str]], typer.Option("--min", help="OP=N: at least N layers.")] = None,
          max_count: Annotated[Optional[list[str]], typer.Option("--max", help="OP=N: at most N layers.")] = None,
          strategy: Annotated[str, typer.Option(help="mip, greedy or pattern:SYMBOLS (e.g. pattern:DDDG).")] = "mip",
          sweep: Annotated[Optional[str], typer.Option(help="START:STOP:STEP: the Pareto frontier.")] = None,
          plot: Annotated[bool, typer.Option(help="With --sweep, also draw it to PNG.")] = False,
          solutions: Annotated[int, typer.Option(help="K diverse plans.")] = 1,
          min_distance: Annotated[int, typer.Option(help="Layers in which the K plans differ.")] = 1,
          time_limit: Annotated[float, typer.Option(help="MIP time limit, seconds.")] = 60.0,
          metric: Annotated[str, typer.Option(help="Score to minimise: kl or delta_loss.")] = "kl",
          device: Annotated[Optional[str], typer.Option(help="Refuse a profile from another device.")] = None,
          allow_stale: AllowStaleOpt = False, overwrite: OverwriteOpt = False,
          out: OutOpt = None, table_out: TableOpt = None, as_json: JsonOpt = False):
    """Stage 3: the least predicted loss per layer assignment that meets the speedup targets (MIP)."""
    from ..search import solver

    _check_solve_flags(strategy, sweep, plot, solutions, min_distance, table_out)
    save_table = _table_writer(table_out)
    kw = dict(speedup=speedup, profile=profile, scores=scores, workloads=workload, ttft_speedup=ttft_speedup,
              tpot_speedup=tpot_speedup, max_cache_bytes=max_cache_bytes, cache_batch=cache_batch,
              cache_context=cache_context, ops=ops, pins=pin, min_count=min_count, max_count=max_count, metric=metric,
              device=device, allow_stale=allow_stale, time_limit_s=time_limit, out=out, overwrite=overwrite,
              max_memory=max_memory)
    if throughput_speedup is not None or memory is not None:
        from ..search.serving import solve_serving

        if throughput_speedup is None or memory is None or strategy != "mip" or sweep or solutions != 1:
            raise UsageError("--throughput-speedup and --memory go together, with the mip strategy, one plan")
        plan = solve_serving(throughput_speedup, memory, context, **kw)
        save_table(plan)
        return views.plans([plan], [solver.plan_path(plan.header.model.id, out)], table_out, as_json, many=False)
    if sweep:
        front = solver.sweep(sweep, plot=plot, **kw)
        save_table(front)
        return views.sweep(front, table_out, as_json)
    plans = (solver.solve_many(solutions, min_distance, **kw) if solutions != 1 else
             [solver.solve(strategy=strategy, **kw)])
    save_table(plans[0])
    paths = [solver.plan_path(p.header.model.id, out, rank) for rank, p in enumerate(plans, 1)]
    views.plans(plans, paths, table_out, as_json, many=solutions > 1)


@app.command()
def build(plan: Annotated[str, typer.Argument(help="A mosaic/layer-plan JSON file.")],
          teacher: ModelOpt = None,
          library: Annotated[Optional[str], typer.Option(
              help="Aligned weights from score (.safetensors); default: the library score wrote with the table the "
                   "plan was solved on, found beside the plan or in layer_plans/<model>/.")] = None,
          no_library: Annotated[bool, typer.Option(
              "--no-library", help="Build from the teacher initialisation, without aligned weights.")] = False,
          out: ModelOutOpt = None,
          dtype: Annotated[str, typer.Option(help="float32, bfloat16 or float16.")] = "float32",
          overwrite: OverwriteOpt = False, allow_stale: AllowStaleOpt = False,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 4: apply a plan to its teacher and write a Hugging Face model directory (trust_remote_code)."""
    from .. import builder

    if library and no_library:
        raise UsageError("--library and --no-library exclude each other")
    with interruptible(lambda: f"{NOTHING_WRITTEN}: a build replaces its output folder only once complete"):
        path = builder.build(plan, teacher=teacher, library=False if no_library else library, out=out, dtype=dtype,
                             overwrite=overwrite, allow_stale=allow_stale, seed=seed)
    views.model_dir(path, as_json)


@app.command()
def distill(model: Annotated[str, typer.Argument(help="A model directory written by mosaic build.")],
            teacher: TeacherOpt = None,
            oracle: Annotated[Optional[str], typer.Option(
                help="A stronger teacher with the same tokenizer, mixed into the on-policy stage.")] = None,
            oracle_weight: Annotated[float, typer.Option(help="Weight of the oracle's divergence (0..1).")] = 0.5,
            data: Annotated[Optional[str], typer.Option(
                help="Training data: .txt, .jsonl or .parquet, or 'self' (default: sampled from the teacher).")]
            = None,
            stage: Annotated[str, typer.Option(help="offpolicy, onpolicy or both.")] = "both",
            steps: Annotated[Optional[int], typer.Option(
                help=f"Optimizer steps per stage (default {distill_defaults.DEFAULT_STEPS}).")] = None,
            tokens: Annotated[Optional[int], typer.Option(help="Instead of --steps: training tokens per stage.")]
            = None,
            lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")]
            = distill_defaults.DEFAULT_LR,
            trainable: Annotated[str, typer.Option(
                help="all, mixers (every layer's token mixer) or replaced (the swapped-in mixers).")] = "all",
            hidden_weight: Annotated[float, typer.Option(
                help="Off-policy: weight of the per-layer hidden-state alignment term (0: off).")]
            = distill_defaults.DEFAULT_HIDDEN_WEIGHT,
            divergence: Annotated[str, typer.Option(help="On-policy: forward, reverse or jsd.")] = "forward",
            batch_size: Annotated[int, typer.Option(help="Windows per step (global, over every process).")]
            = distill_defaults.DEFAULT_BATCH,
            seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")]
            = distill_defaults.DEFAULT_SEQ_LEN,
            out: ModelOutOpt = None, resume: ResumeOpt = False, overwrite: OverwriteOpt = False,
            checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")]
            = distill_defaults.CHECKPOINT_EVERY,
            eval_data: Annotated[Optional[str], typer.Option(
                help="Held-out text for the quality before/after (default: tiny's; other teachers: none).")] = None,
            quality: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure quality before and after.")]
            = True,
            parallel: Annotated[str, typer.Option(
                help="Under torchrun: ddp (a replica per process) or fsdp (FSDP2: each process holds a shard).")]
            = "ddp",
            device: DeviceOpt = "cpu", seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Stage 5: recover quality by distillation from the teacher (off-policy, then on-policy; torchrun scales out)."""
    from ..recovery import distill as lib

    ckpt, show = lib.checkpoint_path(lib.default_out(model, out)), rank0()
    with interruptible(lambda: f"the checkpoint in {ckpt} is kept; rerun with --resume to continue"
                       if ckpt.is_dir() else f"{NOTHING_WRITTEN} (no checkpoint yet)"), \
            progress("distilling", show) as tick:
        path = lib.distill(model, teacher=teacher, oracle=oracle, oracle_weight=oracle_weight, data=data, stage=stage,
                           steps=steps, tokens=tokens, lr=lr, trainable=trainable, hidden_weight=hidden_weight,
                           divergence=divergence, batch_size=batch_size, seq_len=seq_len, out=out, resume=resume,
                           overwrite=overwrite, checkpoint_every=checkpoint_every, eval_data=eval_data,
                           quality=quality, seed=seed, device=device, parallel=parallel, progress=tick)
    if show:
        views.distilled(model, path, lib.load_record(path), as_json)


@app.command("eval")
def eval_(model: Annotated[str, typer.Argument(help="A model directory (built or distilled by mosaic).")],
          teacher: TeacherOpt = None,
          data: Annotated[Optional[str], typer.Option(
              help="Held-out text (.txt/.jsonl/.parquet); its last windows are read (default: tiny's heldout.txt).")]
          = None,
          probes: Annotated[Optional[str], typer.Option(
              help="Recall probes, JSON lines {prompt, answer, distance} (default: tiny's recall_eval.jsonl).")]
          = None,
          windows: Annotated[int, typer.Option(help="Held-out windows.")] = eval_defaults.EVAL_WINDOWS,
          seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per held-out window.")]
          = eval_defaults.EVAL_SEQ_LEN,
          device: DeviceOpt = "cpu", as_json: JsonOpt = False):
    """Measured quality against the teacher: KL, held-out loss and recall (the numbers every report uses)."""
    from ..quality.evaluation import evaluate

    result = evaluate(model, teacher=teacher, data=data, probes=probes, windows=windows, seq_len=seq_len,
                      device=device)
    views.evaluated(model, result, as_json)


@app.command()
def bench(target: Annotated[str, typer.Argument(
              help="A built model directory, or a plan JSON (timed with random weights).")],
          vs: Annotated[Optional[str], typer.Option("--vs", help="Teacher to compare with (default: the plan's).")]
          = None,
          workload: WorkloadOpt = None, device: DeviceOpt = "cpu", image_tokens: ImageTokensOpt = 0,
          generate: Annotated[bool, typer.Option(
              "--generate", help="Time model.generate end to end (TTFT, TPOT, tokens/s) against an all-gqa build and "
                                 "the stock teacher class, instead of the profiler's harness.")] = False,
          context: Annotated[Optional[list[str]], typer.Option(
              help="--generate: prompt length, e.g. 16k (default: the plan's decode contexts); repeatable.")] = None,
          new_tokens: Annotated[int, typer.Option(help="--generate: tokens generated per call.")] = 32,
          batch: Annotated[int, typer.Option(help="--generate: sequences per call.")] = 1,
          seed: SeedOpt = 0, as_json: JsonOpt = False):
    """Measure TTFT / TPOT speedup over the teacher and compare it with the plan's prediction."""
    from ..latency import bench as speedup

    if generate:
        with progress("generate") as tick:
            rows = speedup.bench_generate(target, contexts=context, new_tokens=new_tokens, batch_size=batch,
                                          device=device, seed=seed, progress=tick)
        return views.bench_generate(rows, target, device, batch, new_tokens, as_json)
    with progress("benchmarking") as tick:
        rows = speedup.bench(target, vs=vs, workloads=workload, device=device, seed=seed, progress=tick,
                             image_tokens=image_tokens)
    views.bench(rows, target, device, as_json)


@app.command()
def demo(out: Annotated[str, typer.Option("--out", "-o", help="Report folder (replaced if it holds an earlier demo).")]
         = "demo_report", seed: SeedOpt = 0):
    """The whole pipeline on the embedded teacher on CPU: profile, score, solve, build, bench, report."""
    from .. import demo as lib

    with interruptible(lambda: f"{NOTHING_WRITTEN}: the report replaces {out} only once complete"), \
            progress("mosaic demo") as tick:
        path = lib.demo(out=out, seed=seed, progress=tick)
    views.demo(path)


@app.command()
def ops(as_json: JsonOpt = False):
    """List every registered operator, its HF layer type and whether its fast path runs here."""
    from ..operators import REGISTRY

    views.ops(REGISTRY.values(), as_json)


@app.command()
def check(model: ModelOpt = "tiny", layer: Annotated[int, typer.Option(help="Layer to swap.")] = 0,
          tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = 8, as_json: JsonOpt = False):
    """Swap every operator into one layer and check generate() with the static and dynamic caches equals no cache."""
    from .. import builder

    results = builder.check_generation(model, layer=layer, new_tokens=tokens)
    views.check(results, model, layer, tokens, as_json)
    if not as_json and not all(r["match"] for r in results):  # --json reports a mismatch in its rows, exit 0
        raise MosaicError("generation with cache differs from generation without cache")


# library parameters whose flag is not their name in kebab case (the one place the CLI maps them)
FLAGS = {"model": "--model", "teacher": "--teacher", "as_json": "--json", "quality": "--eval"}


def flag(param: str | None) -> str | None:
    """The command-line flag of library parameter `param` (`batch_size` -> `--batch-size`)."""
    return None if param is None else FLAGS.get(param, "--" + param.replace("_", "-"))


def main(argv=None) -> int:
    """Run the CLI and return its exit code (errors.py lists them); known errors print one line
    (MOSAIC_DEBUG=1 prints the traceback)."""
    debug = bool(os.environ.get("MOSAIC_DEBUG"))
    if not err.is_terminal:  # logs get our plain progress lines, not the hub's and transformers' redrawn bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(args=argv, prog_name="mosaic", standalone_mode=False)
    except KeyboardInterrupt:  # before or after a command (typer handles those inside one)
        return fail(f"interrupted; {NOTHING_WRITTEN}", EXIT_INTERRUPTED)
    except MosaicError as e:
        if debug:
            traceback.print_exc()
        return fail(e.for_flag(flag(e.param)) if isinstance(e, UsageError) else str(e), e.exit_code)
    except typer.Exit as e:
        return e.exit_code
    except typer.Abort:
        return fail("aborted", EXIT_RUNTIME)
    except Exception as e:
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):  # click's (typer's vendored) usage errors
            return fail(" ".join(e.format_message().split()), e.exit_code)
        if debug:
            raise
        return fail(f"{type(e).__name__}: {e} (MOSAIC_DEBUG=1 for the traceback)".replace("\n", " "), EXIT_RUNTIME)
    # without standalone mode typer returns, not raises, the code of a typer.Exit, and its own exit 130 for a
    # Ctrl-C in a command that has no `interruptible` note (those write nothing before they finish)
    if code == EXIT_INTERRUPTED:
        return fail(f"interrupted; {NOTHING_WRITTEN}", code)
    return code if isinstance(code, int) else EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
