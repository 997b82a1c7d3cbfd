"""Option types of the command line, declared once (as `Annotated` aliases) and shared by every command, and the
defaults of the options, read from the library's signatures."""

from __future__ import annotations

import inspect
from typing import Annotated, Optional

import typer

from ..operators import OPS_HELP

ModelOpt = Annotated[str, typer.Option("--model", "--teacher", "-m",
                                       help="Hub id, local directory, or an embedded teacher ('tiny'; 'tiny-vl', "
                                            "a Qwen3-VL that reads its images).")]
TeacherOpt = Annotated[Optional[str], typer.Option(help="Teacher (default: the one the plan records).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON instead of tables.")]
SeedOpt = Annotated[int, typer.Option("--seed", help="Random seed (recorded in outputs).")]
OutOpt = Annotated[Optional[str], typer.Option(
    "--out", "-o", help="Output path (default: under profiles/ or layer_plans/).")]
ModelOutOpt = Annotated[Optional[str], typer.Option("--out", "-o", help=(
    "Model directory (default: build/<model>-<pattern> for build, <model>-distilled for distill)."))]
OpsOpt = Annotated[Optional[str], typer.Option("--ops", help=OPS_HELP + " Default: every operator.")]
WorkloadOpt = Annotated[Optional[list[str]], typer.Option(help=(
    "A workload (repeatable, or comma-separated). profile: phase:tokens[:bN], e.g. prefill:32k or decode:96k:b8 (default: the device's "
    "set); solve, refine: only this workload of the profile, by name, e.g. decode-b1-c96k; bench: a spec or name "
    "(default: those the plan predicts)."))]
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
QuestionsOpt = Annotated[Optional[str], typer.Option(help=(
    "Questions with answers, JSON lines {messages, answer} (images for a VLM), scored by exact match of the greedy "
    "answer (default: tiny-vl's image_eval.jsonl for tiny-vl)."))]
EmbeddedOpt = Annotated[str, typer.Option("--teacher", help=(
    "The embedded teacher: 'tiny', or 'tiny-vl' (a Qwen3-VL that reads short strings off its images; the report "
    "adds image-question accuracy before and after distillation)."))]

# the targets and constraints `solve` and `refine` both take
SpeedupOpt = Annotated[Optional[float], typer.Option(help="Target speedup for every workload in scope.")]
ProfileOpt = Annotated[Optional[str], typer.Option(help="Latency profile (default: newest).")]
ScoresOpt = Annotated[Optional[str], typer.Option(help="Sensitivity table (default: newest matching).")]
TtftOpt = Annotated[Optional[float], typer.Option(help="Target for prefill workloads.")]
TpotOpt = Annotated[Optional[float], typer.Option(help="Target for decode workloads.")]
CacheBytesOpt = Annotated[Optional[int], typer.Option(help="Bound on the generation cache.")]
CacheBatchOpt = Annotated[int, typer.Option(help="Sequences the cache bound holds.")]
CacheContextOpt = Annotated[Optional[int], typer.Option(help="Context of the cache bound.")]
PinOpt = Annotated[Optional[list[str]], typer.Option(help="LAYER=OP, e.g. 0=gqa (repeatable, or comma-separated).")]
MinOpt = Annotated[Optional[list[str]], typer.Option("--min", help="OP=N: at least N layers (repeatable, or "
                                                                   "comma-separated).")]
MaxOpt = Annotated[Optional[list[str]], typer.Option("--max", help="OP=N: at most N layers (repeatable, or "
                                                                   "comma-separated).")]
MaxMemoryOpt = Annotated[Optional[float], typer.Option(
    help="Bound on weights + cache at --cache-batch and --cache-context: bytes, or at most 1 a fraction of the "
         "teacher's.")]
# the serving regime (`solve` only)
ThroughputOpt = Annotated[Optional[float], typer.Option(
    help="Serving: batch / TPOT at least this times the teacher's within --memory (chooses the batch).")]
MemoryOpt = Annotated[Optional[float], typer.Option(
    help="Serving: bytes for weights + cache (at most 1: a fraction of the teacher's).")]
ContextOpt = Annotated[Optional[int], typer.Option(help="Serving: the context the cache holds.")]


def defaults(*functions) -> dict:
    """{parameter: default} of library functions (the later wins): every option that forwards to a parameter
    defaults to the library's value by construction, never to a number restated here. The library modules import
    no torch at top level, so reading their signatures keeps `mosaic --help` light."""
    return {k: p.default for fn in functions for k, p in inspect.signature(fn).parameters.items()
            if p.default is not p.empty}
