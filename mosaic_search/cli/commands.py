"""The `mosaic` command: a thin Typer shell over the library (tables in views.py, terminal plumbing in terminal.py)."""

from __future__ import annotations

import os
import sys
import time
import traceback
from typing import Annotated, Optional

import typer

from .. import __version__, builder
from .. import demo as demo_lib
from ..errors import EXIT_INTERRUPTED, EXIT_OK, EXIT_RUNTIME, MosaicError, UsageError
from ..hf.device import DTYPES
from ..latency import bench as bench_lib
from ..latency import profiler
from ..quality import evaluation, scorer
from ..quality import refine as refine_lib  # no torch at top level
from ..recovery import distill as distill_lib
from ..search import problem, serving, solver
from . import views
from .options import (AllowStaleOpt, CacheBatchOpt, CacheBytesOpt, CacheContextOpt, ContextOpt, DeviceOpt,
                      EmbeddedOpt, ImageTokensOpt, JsonOpt, MaxMemoryOpt, MaxOpt, MemoryOpt, MinOpt, ModelOpt,
                      ModelOutOpt, OpsOpt, OutOpt, OverwriteOpt, PinOpt, ProfileOpt, QuestionsOpt, ResumeOpt,
                      ScoresOpt, SeedOpt, SpeedupOpt, TableOpt, TeacherOpt, ThroughputOpt, TpotOpt, TtftOpt,
                      WorkloadOpt, defaults)
from .terminal import NOTHING_WRITTEN, console, err, fail, interruptible, progress, rank0, show_notes


PROFILE = defaults(profiler.profile)
SCORE = defaults(scorer.score)
SOLVE = defaults(problem.prepare, solver.solve_many, solver.solve)
BUILD = defaults(builder.build)
DISTILL = defaults(distill_lib.distill)
REFINE = defaults(problem.prepare, refine_lib.refine)
EVAL = defaults(evaluation.evaluate)
BENCH = defaults(bench_lib.bench_generate, bench_lib.bench)
DEMO = defaults(demo_lib.demo)
CHECK = defaults(builder.check_generation)

app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Hardware-aware architecture search: profile -> score -> solve -> build -> distill.")

def _version(value: bool):
    if value:
        console.print(f"mosaic {__version__}")
        raise typer.Exit()


@app.callback()
def _root(version: Annotated[Optional[bool], typer.Option("--version", callback=_version, is_eager=True,
                                                           help="Print the version and exit.")] = None):
    """Hardware-aware architecture search: profile -> score -> solve -> build -> distill."""


def _table_writer(path, **inputs):
    """Check a --table path before any work (writable, and none of the command's `inputs`, {parameter: path}); return
    what writes an artifact's rows there (nothing without one)."""
    if not path:
        return lambda artifact: None
    from ..artifacts import files, frames

    files.check_not_input([path], inputs, "table_out")
    frames.check_table(path, "table_out")
    return lambda artifact: frames.write_table(artifact, path)


# The commands, in pipeline order: `mosaic --help` lists them in the order they are defined here.
@app.command()
def profile(model: ModelOpt = PROFILE["model"], device: DeviceOpt = PROFILE["device"], ops: OpsOpt = PROFILE["ops"],
            workload: WorkloadOpt = PROFILE["workloads"], out: OutOpt = PROFILE["out"],
            validate: Annotated[bool, typer.Option(
                help="Also time whole models (teacher and two mixes) in the same passes and report predicted "
                     "vs measured latency.")] = PROFILE["validate"],
            layers_per_sample: Annotated[Optional[int], typer.Option(
                help="Layers holding the candidate, run in sequence per sample (default: all on cpu, 1 on cuda).")
            ] = PROFILE["layers_per_sample"],
            image_tokens: ImageTokensOpt = PROFILE["image_tokens"], table_out: TableOpt = None,
            seed: SeedOpt = PROFILE["seed"], as_json: JsonOpt = False):
    """Stage 1: time every candidate mixer as a whole decoder layer on this device."""
    save_table = _table_writer(table_out, model=model)  # a bad --table fails before the profile runs, not after
    with interruptible(lambda: f"{NOTHING_WRITTEN}: a profile is saved only once complete"), \
            progress("profiling") as tick:
        prof = profiler.profile(model=model, device=device, ops=ops, workloads=workload, out=out, seed=seed,
                                progress=tick, image_tokens=image_tokens, layers_per_sample=layers_per_sample,
                                validate=validate)
    save_table(prof)
    views.profile(prof, profiler.profile_path(model, prof.header.env, out), table_out, as_json)


@app.command()
def score(teacher: ModelOpt = SCORE["teacher"],
          data: Annotated[Optional[str], typer.Option(
              help="A .txt, .jsonl or .parquet file (chat rows may hold images for a VLM teacher), or 'self' "
                   "(default: tiny's calibration.txt, held-out text with recall; else self).")] = SCORE["data"],
          ops: OpsOpt = SCORE["ops"],
          tokens: Annotated[Optional[int], typer.Option(
              help=f"Calibration tokens scored (default {scorer.DEFAULT_TOKENS}, at least two windows).")]
          = SCORE["tokens"],
          seq_len: Annotated[Optional[int], typer.Option(
              "--seq-len", help=f"Tokens per window (default {scorer.DEFAULT_SEQ_LEN}, or twice the largest SWA "
                                "window).")] = SCORE["seq_len"],
          align_steps: Annotated[Optional[int], typer.Option(
              "--align-steps", help=f"Local alignment steps of gdn/kda/mla (default {scorer.DEFAULT_ALIGN_STEPS}; "
                                    "0: the raw init).")] = SCORE["align_steps"],
          out: OutOpt = SCORE["out"], resume: ResumeOpt = SCORE["resume"], device: DeviceOpt = SCORE["device"],
          device_map: Annotated[Optional[str], typer.Option(help="e.g. auto: spread a large teacher over GPUs.")]
          = SCORE["device_map"],
          table_out: TableOpt = None, seed: SeedOpt = SCORE["seed"], as_json: JsonOpt = False):
    """Stage 2: KL to the teacher of every (layer, operator) swap, after local alignment (torchrun splits items)."""
    save_table, show, start = _table_writer(table_out, data=data, teacher=teacher), rank0(), time.perf_counter()
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


def _check_solve_flags(strategy, sweep, plot, solutions, min_distance, table_out, serving=(None, None)) -> None:
    """The flag combinations `solve` refuses: each library function takes only its own keywords."""
    if serving != (None, None) and (None in serving or strategy != "mip" or sweep or solutions != 1):
        raise UsageError("--throughput-speedup and --memory go together, with the mip strategy, for one plan")
    if plot and not sweep:
        raise UsageError("--plot needs --sweep")
    if solutions != 1 and (sweep or strategy != "mip"):
        raise UsageError("--solutions needs the mip strategy and no --sweep")
    if min_distance != 1 and solutions == 1:
        raise UsageError(f"--min-distance {min_distance} needs --solutions 2 or more")
    if table_out and solutions != 1:
        raise UsageError("--table writes one plan or one sweep; drop --solutions")


@app.command()
def solve(speedup: SpeedupOpt = SOLVE["speedup"], profile: ProfileOpt = SOLVE["profile"],
          scores: ScoresOpt = SOLVE["scores"], workload: WorkloadOpt = SOLVE["workloads"],
          ttft_speedup: TtftOpt = SOLVE["ttft_speedup"], tpot_speedup: TpotOpt = SOLVE["tpot_speedup"],
          max_cache_bytes: CacheBytesOpt = SOLVE["max_cache_bytes"], cache_batch: CacheBatchOpt = SOLVE["cache_batch"],
          cache_context: CacheContextOpt = SOLVE["cache_context"], ops: OpsOpt = SOLVE["ops"],
          pin: PinOpt = SOLVE["pins"], min_count: MinOpt = SOLVE["min_count"], max_count: MaxOpt = SOLVE["max_count"],
          max_memory: MaxMemoryOpt = SOLVE["max_memory"], throughput_speedup: ThroughputOpt = None,
          memory: MemoryOpt = None, context: ContextOpt = None,
          strategy: Annotated[str, typer.Option(help="mip, greedy or pattern:SYMBOLS (e.g. pattern:DDDG).")]
          = SOLVE["strategy"],
          sweep: Annotated[Optional[str], typer.Option(help="START:STOP:STEP: the Pareto frontier.")] = None,
          plot: Annotated[bool, typer.Option(help="With --sweep, also draw it to PNG.")] = False,
          solutions: Annotated[int, typer.Option(help="K diverse plans (1: solve's one plan).")] = 1,
          min_distance: Annotated[int, typer.Option(help="Layers in which the K plans differ.")]
          = SOLVE["min_distance"],
          time_limit: Annotated[float, typer.Option(help="MIP time limit, seconds.")] = SOLVE["time_limit_s"],
          metric: Annotated[str, typer.Option(help="Score to minimise: kl or delta_loss.")] = SOLVE["metric"],
          device: Annotated[Optional[str], typer.Option(help="Refuse a profile from another device.")]
          = SOLVE["device"],
          allow_stale: AllowStaleOpt = SOLVE["allow_stale"], overwrite: OverwriteOpt = SOLVE["overwrite"],
          out: OutOpt = SOLVE["out"], table_out: TableOpt = None, as_json: JsonOpt = False):
    """Stage 3: the least predicted loss per layer assignment that meets the speedup targets (MIP)."""
    _check_solve_flags(strategy, sweep, plot, solutions, min_distance, table_out, (throughput_speedup, memory))
    save_table = _table_writer(table_out, profile=profile, scores=scores)
    kw = dict(speedup=speedup, profile=profile, scores=scores, workloads=workload, ttft_speedup=ttft_speedup,
              tpot_speedup=tpot_speedup, max_cache_bytes=max_cache_bytes, cache_batch=cache_batch,
              cache_context=cache_context, ops=ops, pins=pin, min_count=min_count, max_count=max_count, metric=metric,
              device=device, allow_stale=allow_stale, time_limit_s=time_limit, out=out, overwrite=overwrite,
              max_memory=max_memory)
    if sweep:
        front = solver.sweep(sweep, reserve=(".png",) if plot else (), **kw)
        if plot:
            from .plots import plot_frontier

            plot_frontier(front, front.files[2])
        save_table(front)
        return views.sweep(front, table_out, as_json)
    plans = ([serving.solve_serving(throughput_speedup, memory, context, **kw)] if memory is not None else
             solver.solve_many(solutions, min_distance, **kw) if solutions != 1 else
             [solver.solve(strategy=strategy, **kw)])
    save_table(plans[0])
    paths = [solver.plan_path(p.header.model.id, out, rank) for rank, p in enumerate(plans, 1)]
    views.plans(plans, paths, table_out, as_json, many=solutions > 1)


@app.command()
def refine(speedup: SpeedupOpt = REFINE["speedup"],
           plan: Annotated[Optional[str], typer.Option(
               help="A plan solve wrote: refine under its targets and constraints (on its profile and table).")]
           = REFINE["plan"],
           profile: ProfileOpt = REFINE["profile"], scores: ScoresOpt = REFINE["scores"],
           workload: WorkloadOpt = REFINE["workloads"], ttft_speedup: TtftOpt = REFINE["ttft_speedup"],
           tpot_speedup: TpotOpt = REFINE["tpot_speedup"], max_cache_bytes: CacheBytesOpt = REFINE["max_cache_bytes"],
           cache_batch: CacheBatchOpt = REFINE["cache_batch"], cache_context: CacheContextOpt = REFINE["cache_context"],
           ops: OpsOpt = REFINE["ops"], pin: PinOpt = REFINE["pins"], min_count: MinOpt = REFINE["min_count"],
           max_count: MaxOpt = REFINE["max_count"],
           metric: Annotated[str, typer.Option(help="Score the MIP repairs with: kl or delta_loss.")]
           = REFINE["metric"],
           time_limit: Annotated[float, typer.Option(help="MIP time limit per repair, seconds.")]
           = REFINE["time_limit_s"],
           teacher: TeacherOpt = REFINE["teacher"],
           library: Annotated[Optional[str], typer.Option(
               help="Aligned weights from score (default: the library written with the table).")] = REFINE["library"],
           data: Annotated[Optional[str], typer.Option(
               help="Calibration text (default: the table's; never the held-out text eval reads).")] = REFINE["data"],
           seq_len: Annotated[Optional[int], typer.Option(
               "--seq-len", help="Tokens per window (default: the table's).")] = REFINE["seq_len"],
           evaluations: Annotated[int, typer.Option(help="Budget: plans measured (screening and full together).")]
           = REFINE["evaluations"],
           seconds: Annotated[Optional[float], typer.Option(help="Budget: seconds of measuring (also).")]
           = REFINE["seconds"],
           solutions: Annotated[int, typer.Option(help="Seeds from the MIP: K diverse plans.")] = REFINE["solutions"],
           min_distance: Annotated[int, typer.Option(help="Layers in which the MIP's seeds differ.")]
           = REFINE["min_distance"],
           low_windows: Annotated[int, typer.Option(help="Screening fidelity: calibration windows per plan.")]
           = REFINE["low_windows"],
           high_windows: Annotated[int, typer.Option(help="Full fidelity: calibration windows per plan.")]
           = REFINE["high_windows"],
           offspring: Annotated[int, typer.Option(help="Moves screened per generation.")] = REFINE["offspring"],
           survivors: Annotated[int, typer.Option(help="Of them, measured at full fidelity.")] = REFINE["survivors"],
           rerank_steps: Annotated[int, typer.Option(
               help="Distill the best few plans this many steps and hand over the best after it (0: off).")]
           = REFINE["rerank_steps"],
           rerank_finalists: Annotated[int, typer.Option(
               help="Best plans re-ranked after distillation (and the MIP's own plan when not among them).")]
           = REFINE["rerank_finalists"],
           max_memory: MaxMemoryOpt = REFINE["max_memory"],
           resume: Annotated[bool, typer.Option(help="Continue an interrupted run from its progress file.")]
           = REFINE["resume"],
           device: Annotated[str, typer.Option(help="Where plans are measured: cpu or cuda.")] = REFINE["device"],
           allow_stale: AllowStaleOpt = REFINE["allow_stale"], overwrite: OverwriteOpt = REFINE["overwrite"],
           out: OutOpt = REFINE["out"], table_out: TableOpt = None, seed: SeedOpt = REFINE["seed"],
           as_json: JsonOpt = False):
    """Between solve and build: search around the MIP's plans on the true KL to the teacher, every budget kept."""
    from ..artifacts.search_record import load_search_record

    save_table = _table_writer(table_out, plan=plan, profile=profile, scores=scores, library=library, data=data)
    with progress("refining") as tick:  # refine says itself what an interruption kept
        result = refine_lib.refine(profile, scores, plan=plan, teacher=teacher, library=library, data=data,
                                   seq_len=seq_len,
                            evaluations=evaluations, seconds=seconds, solutions=solutions, min_distance=min_distance,
                            low_windows=low_windows, high_windows=high_windows, offspring=offspring,
                            survivors=survivors, rerank_steps=rerank_steps, rerank_finalists=rerank_finalists,
                            seed=seed, resume=resume, out=out, overwrite=overwrite, max_memory=max_memory,
                            allow_stale=allow_stale, device=device, progress=tick, speedup=speedup, workloads=workload,
                            ttft_speedup=ttft_speedup, tpot_speedup=tpot_speedup, max_cache_bytes=max_cache_bytes,
                            cache_batch=cache_batch, cache_context=cache_context, ops=ops, pins=pin,
                            min_count=min_count, max_count=max_count, metric=metric, time_limit_s=time_limit)
    path, record_path, _ = refine_lib.refine_paths(result.header.model.id, out)
    record = load_search_record(record_path)
    save_table(record)
    views.refined(result, path, record, record_path, table_out, as_json)


@app.command()
def build(plan: Annotated[str, typer.Argument(help="A mosaic/layer-plan JSON file.")],
          teacher: ModelOpt = BUILD["teacher"],
          library: Annotated[Optional[str], typer.Option(
              help="Aligned weights from score (.safetensors); default: the library score wrote with the table the "
                   "plan was solved on, found beside the plan or in layer_plans/<model>/.")] = BUILD["library"],
          no_library: Annotated[bool, typer.Option(
              "--no-library", help="Build from the teacher initialisation, without aligned weights.")] = False,
          out: ModelOutOpt = BUILD["out"],
          dtype: Annotated[str, typer.Option(help=", ".join(DTYPES[:-1]) + " or " + DTYPES[-1] + ".")]
          = BUILD["dtype"],
          overwrite: OverwriteOpt = BUILD["overwrite"], allow_stale: AllowStaleOpt = BUILD["allow_stale"],
          seed: SeedOpt = BUILD["seed"], as_json: JsonOpt = False):
    """Stage 4: apply a plan to its teacher and write a Hugging Face model directory (trust_remote_code)."""
    if library and no_library:
        raise UsageError("--library and --no-library exclude each other")
    with interruptible(lambda: f"{NOTHING_WRITTEN}: a build replaces its output folder only once complete"):
        path = builder.build(plan, teacher=teacher, library=False if no_library else library, out=out, dtype=dtype,
                             overwrite=overwrite, allow_stale=allow_stale, seed=seed)
    views.model_dir(path, as_json)


@app.command()
def distill(model: Annotated[str, typer.Argument(help="A model directory written by mosaic build.")],
            teacher: TeacherOpt = DISTILL["teacher"],
            oracle: Annotated[Optional[str], typer.Option(
                help="A stronger teacher with the same tokenizer, mixed into the on-policy stage.")]
            = DISTILL["oracle"],
            oracle_weight: Annotated[float, typer.Option(help="Weight of the oracle's divergence (0..1).")]
            = DISTILL["oracle_weight"],
            data: Annotated[Optional[str], typer.Option(
                help="Training data: .txt, .jsonl or .parquet, or 'self' (default: sampled from the teacher).")]
            = DISTILL["data"],
            stage: Annotated[str, typer.Option(help="offpolicy, onpolicy or both.")] = DISTILL["stage"],
            steps: Annotated[Optional[int], typer.Option(
                help=f"Optimizer steps per stage (default {distill_lib.DEFAULT_STEPS}).")] = DISTILL["steps"],
            tokens: Annotated[Optional[int], typer.Option(help="Instead of --steps: training tokens per stage.")]
            = DISTILL["tokens"],
            lr: Annotated[float, typer.Option(help="Peak learning rate (AdamW, warm-up then cosine).")]
            = DISTILL["lr"],
            trainable: Annotated[str, typer.Option(
                help="all, mixers (every layer's token mixer) or replaced (what the plan swapped in: mixers, MLPs).")]
            = DISTILL["trainable"],
            hidden_weight: Annotated[float, typer.Option(
                help="Off-policy: weight of the per-layer hidden-state alignment term (0: off).")]
            = DISTILL["hidden_weight"],
            divergence: Annotated[str, typer.Option(help="On-policy: forward, reverse or jsd.")]
            = DISTILL["divergence"],
            batch_size: Annotated[int, typer.Option(help="Windows per step (global, over every process).")]
            = DISTILL["batch_size"],
            seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per window.")] = DISTILL["seq_len"],
            out: ModelOutOpt = DISTILL["out"], resume: ResumeOpt = DISTILL["resume"],
            overwrite: OverwriteOpt = DISTILL["overwrite"],
            checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints.")]
            = DISTILL["checkpoint_every"],
            eval_data: Annotated[Optional[str], typer.Option(
                help="Held-out text for the quality before/after (default: tiny's; other teachers: none).")]
            = DISTILL["eval_data"],
            quality: Annotated[bool, typer.Option("--eval/--no-eval", help="Measure quality before and after.")]
            = DISTILL["quality"],
            parallel: Annotated[str, typer.Option(
                help="Under torchrun: ddp (a replica per process) or fsdp (FSDP2: each process holds a shard).")]
            = DISTILL["parallel"],
            dtype: Annotated[Optional[str], typer.Option(
                help="The output's dtype: float32, bfloat16 or float16 (default: the build's; training runs in "
                     "float32).")] = DISTILL["dtype"],
            device: DeviceOpt = DISTILL["device"], seed: SeedOpt = DISTILL["seed"], as_json: JsonOpt = False):
    """Stage 5: recover quality by distillation from the teacher (off-policy, then on-policy; torchrun scales out)."""
    from ..artifacts.distill_record import load_distill_record

    ckpt, show = distill_lib.checkpoint_path(distill_lib.default_out(model, out)), rank0()
    with interruptible(lambda: f"the checkpoint in {ckpt} is kept; rerun with --resume to continue"
                       if ckpt.is_dir() else f"{NOTHING_WRITTEN} (no checkpoint yet)"), \
            progress("distilling", show) as tick:
        path = distill_lib.distill(model, teacher=teacher, oracle=oracle, oracle_weight=oracle_weight, data=data,
                                   stage=stage,
                           steps=steps, tokens=tokens, lr=lr, trainable=trainable, hidden_weight=hidden_weight,
                           divergence=divergence, batch_size=batch_size, seq_len=seq_len, out=out, resume=resume,
                           overwrite=overwrite, checkpoint_every=checkpoint_every, eval_data=eval_data,
                           quality=quality, seed=seed, device=device, parallel=parallel,
                           dtype=dtype, progress=tick)
    if show:
        views.distilled(model, path, load_distill_record(path), as_json)


@app.command("eval")
def eval_(model: Annotated[str, typer.Argument(help="A model directory (built or distilled by mosaic).")],
          teacher: TeacherOpt = EVAL["teacher"],
          data: Annotated[Optional[str], typer.Option(
              help="Held-out text (.txt/.jsonl/.parquet); its last windows are read (default: tiny's heldout.txt).")]
          = EVAL["data"],
          probes: Annotated[Optional[str], typer.Option(
              help="Recall probes, JSON lines {prompt, answer, distance} (default: tiny's recall_eval.jsonl).")]
          = EVAL["probes"],
          windows: Annotated[int, typer.Option(help="Held-out windows.")] = EVAL["windows"],
          seq_len: Annotated[int, typer.Option("--seq-len", help="Tokens per held-out window.")] = EVAL["seq_len"],
          questions: QuestionsOpt = EVAL["questions"], device: DeviceOpt = EVAL["device"], as_json: JsonOpt = False):
    """Measured quality against the teacher: KL, held-out loss, recall and question accuracy (every report's)."""
    result = evaluation.evaluate(model, teacher=teacher, data=data, probes=probes, windows=windows, seq_len=seq_len,
                                 device=device, questions=questions)
    views.evaluated(model, result, as_json)


@app.command()
def bench(target: Annotated[str, typer.Argument(
              help="A built model directory, or a plan JSON (timed with random weights).")],
          vs: Annotated[Optional[str], typer.Option("--vs", help="Teacher to compare with (default: the plan's).")]
          = BENCH["vs"],
          workload: WorkloadOpt = BENCH["workloads"], device: DeviceOpt = BENCH["device"],
          image_tokens: ImageTokensOpt = BENCH["image_tokens"],
          generate: Annotated[bool, typer.Option(
              "--generate", help="Time model.generate end to end (TTFT, TPOT, tokens/s) against an all-gqa build and "
                                 "the stock teacher class, instead of the profiler's harness.")] = False,
          context: Annotated[Optional[list[str]], typer.Option(
              help="--generate: prompt length, e.g. 16k (default: the plan's decode contexts); repeatable, or "
                   "comma-separated.")]
          = BENCH["contexts"],
          new_tokens: Annotated[int, typer.Option(help="--generate: tokens generated per call.")]
          = BENCH["new_tokens"],
          batch: Annotated[int, typer.Option(help="--generate: sequences per call.")] = BENCH["batch_size"],
          seed: SeedOpt = BENCH["seed"], as_json: JsonOpt = False):
    """Measure TTFT / TPOT speedup over the teacher and compare it with the plan's prediction."""
    if generate:
        with progress("generate") as tick:
            rows = bench_lib.bench_generate(target, contexts=context, new_tokens=new_tokens, batch_size=batch,
                                          device=device, seed=seed, progress=tick)
        return views.bench_generate(rows, target, device, batch, new_tokens, as_json)
    with progress("benchmarking") as tick:
        rows = bench_lib.bench(target, vs=vs, workloads=workload, device=device, seed=seed, progress=tick,
                             image_tokens=image_tokens)
    views.bench(rows, target, device, as_json)


@app.command()
def demo(out: Annotated[str, typer.Option("--out", "-o", help="Report folder (replaced if it holds an earlier demo).")]
         = DEMO["out"], seed: SeedOpt = DEMO["seed"], teacher: EmbeddedOpt = DEMO["teacher"]):
    """The whole pipeline on an embedded teacher on CPU: profile, score, solve, build, distill, bench, report."""
    with interruptible(lambda: f"{NOTHING_WRITTEN}: the report replaces {out} only once complete"), \
            progress("mosaic demo", every_step=True) as tick:
        path = demo_lib.demo(out=out, seed=seed, progress=tick, teacher=teacher)
    views.demo(path)


@app.command()
def ops(as_json: JsonOpt = False):
    """List every registered operator, its HF layer type and whether its fast path runs here."""
    from ..operators import REGISTRY

    views.ops(REGISTRY.values(), as_json)


@app.command()
def check(model: ModelOpt = PROFILE["model"],
          layer: Annotated[int, typer.Option(help="Layer to swap.")] = CHECK["layer"],
          tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = CHECK["new_tokens"],
          as_json: JsonOpt = False):
    """Swap every operator into one layer and check generate() with the static and dynamic caches equals no cache."""
    results = builder.check_generation(model, layer=layer, new_tokens=tokens)
    views.check(results, model, layer, tokens, as_json)
    if not as_json and not all(r["match"] for r in results):  # --json reports a mismatch in its rows, exit 0
        raise MosaicError("generation with cache differs from generation without cache")


# library parameters whose flag is not their name in kebab case (the one place the CLI maps them), for every
# command, then where a command's flag differs from the others'
FLAGS = {"as_json": "--json", "quality": "--eval", "workloads": "--workload", "pins": "--pin", "min_count": "--min",
         "max_count": "--max", "time_limit_s": "--time-limit", "speedups": "--sweep", "contexts": "--context",
         "table_out": "--table"}
# (a command's positional argument is named as its help shows it: build's plan is PLAN)
COMMAND_FLAGS = {"bench": {"batch_size": "--batch", "target": "TARGET"}, "check": {"new_tokens": "--tokens"},
                 "build": {"plan": "PLAN"}, "distill": {"model": "MODEL"}, "eval": {"model": "MODEL"}}


def flag(param: str, command: str | None = None) -> str:
    """The flag of library parameter `param` on `command`'s line (`batch_size` -> `--batch-size`, on bench
    `--batch`)."""
    return COMMAND_FLAGS.get(command, {}).get(param) or FLAGS.get(param, "--" + param.replace("_", "-"))


def main(argv=None) -> int:
    """Run the CLI and return its exit code (errors.py lists them); known errors print one line
    (MOSAIC_DEBUG=1 prints the traceback)."""
    debug = bool(os.environ.get("MOSAIC_DEBUG"))
    show_notes()
    if not err.is_terminal:  # logs get our plain progress lines, not the hub's and transformers' redrawn bars
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        code = app(args=argv, prog_name="mosaic", standalone_mode=False)
    except KeyboardInterrupt:  # before or after a command (typer handles those inside one)
        return fail(f"interrupted; {NOTHING_WRITTEN}", EXIT_INTERRUPTED)
    except MosaicError as e:
        if debug:
            traceback.print_exc()
        command = next((a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")), None)
        return fail(e.for_cli(lambda param: flag(param, command)), e.exit_code)
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
