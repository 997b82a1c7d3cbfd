"""`mosaic bench`: end-to-end TTFT / TPOT of a mosaic model against its teacher, under the profiler's harness
(`harness.py`), next to the plan's predicted speedup. (Named speedup, not bench, so the module never shadows the
`mosaic_search.bench` entry point once imported.)"""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path

from ..artifacts import files
from ..artifacts.plan import LayerPlan, load_plan
from ..artifacts.profile import Workload, parse_workload, workload_from_name, workload_name
from ..errors import MosaicError, UsageError, check, integer, invalid, listed, path_arg
from ..hf import assembly, surgery
from ..hf.device import check_device, default_dtype
from ..hf.models import auto_class, model_from_config, resolve
from ..operators import unbuildable
from .harness import Bench, load_bench
from .timing import Pool, busy_machine, check_settings, default_rounds, default_timer

logger = logging.getLogger(__name__)


def bench(target, vs: str | None = None, workloads=None, device: str = "cpu", dtype: str | None = None,
          timer=None, seed: int = 0, progress=None, compile_decode: bool | None = None,
          rounds: int | None = None, image_tokens: int = 0) -> list[dict]:
    """Measure speedup of `target` over the teacher `vs` for each workload.

    `target` is a built model directory (loaded with trust_remote_code, as a user would) or a plan JSON,
    which is applied with `surgery.swap` to the teacher's architecture with random weights (latency does
    not depend on values, so real-size plans can be timed without the teacher's weights).
    Workloads default to those the plan predicted; decode steps are compiled as in `harness.load_bench`;
    `rounds` passes alternate teacher and model with samples pooled (`timing.default_rounds`), and a
    paired timer (CPU) times each model step right after a teacher step and reports their typical ratio;
    `image_tokens`: a VLM's prefill also encodes an image (use the profile's value, see `profiler.profile`).
    Returns one row per workload, naming the teacher timed against and where the workloads came from.
    """
    check_settings(rounds, dtype, image_tokens, seed)
    path_arg("vs", vs, optional=True, what="a model id or directory")
    names = listed("workloads", workloads)
    device = check_device(device)
    plan, model_dir = _resolve(target)
    names = names or list(plan.predicted)
    for w in names:
        check(isinstance(w, (Workload, str)), "workloads", f"items must be specs or names of workloads, got {w!r}")
    if not names:
        raise UsageError("no workloads: the plan predicts none; pass `workloads`")
    wls = [w if not isinstance(w, str) else (parse_workload(w) if ":" in w else workload_from_name(w))
           for w in names]
    timer = timer or default_timer(device)
    teacher = resolve(vs or plan.header.model.id, shipped_ok=True)  # once, for both benches
    _, base = load_bench(teacher, device, dtype, seed, compile_decode, image_tokens)
    if model_dir is None:
        _, mine = load_bench(teacher, device, dtype, seed, compile_decode, image_tokens)
        mine.assign(plan.layers)
    else:
        mine = _load_built(model_dir, device, dtype or base.stack.embed.weight.dtype, base.compile_decode, image_tokens)
    rounds = rounds or default_rounds(device)
    pool = Pool(timer)
    for r in range(rounds):  # teacher and model alternate, so a slow phase of the machine hits both
        for i, w in enumerate(wls):
            if pool.paired:
                pool.reference = base.model_fn(w)
            else:
                pool.measure(("baseline", w.name), lambda: base.model_fn(w), w)
            pool.measure(("model", w.name), lambda: mine.model_fn(w), w)
            if progress:
                progress(r * len(wls) + i + 1, rounds * len(wls), w.name)
    if pool.failed:
        (_, w), (status, reason) = next(iter(pool.failed.items()))
        raise MosaicError(f"{w}: {status}: {reason}")
    if busy := busy_machine(device):
        logger.warning(busy)
    stats = pool.stats()
    rows = []
    for w in wls:
        teacher_ms = stats["baseline", w.name].median_ms
        model_ms = stats["model", w.name].median_ms
        measured = teacher_ms / model_ms
        pred = plan.predicted.get(w.name, {}).get("speedup")
        # what was discovered is named in every row: the teacher (`vs` or the plan's) and where the workloads came from
        rows.append({"teacher": teacher.id, "workloads_from": "given" if workloads else "the plan's predictions",
                     "workload": w.name, "phase": w.phase, "batch_size": w.batch_size, "seq_len": w.seq_len,
                     "teacher_ms": teacher_ms, "model_ms": model_ms, "measured_speedup": measured,
                     "predicted_speedup": pred,
                     "error_pct": None if pred is None else 100 * (pred - measured) / measured})
    return rows


def _resolve(target) -> tuple[LayerPlan, Path | None]:
    path = Path(path_arg("target", target, what="a model directory or a plan file"))
    if path.is_dir():
        plan_file = path / "mosaic_plan.json"
        if not plan_file.is_file():
            raise UsageError(f"{path}: not a mosaic model directory (no mosaic_plan.json)")
        return load_plan(plan_file), path
    if path.suffix == ".json":
        plan = load_plan(path)
        if why := unbuildable(plan.layers):
            raise UsageError(f"{path}: {why}")
        return plan, None
    raise UsageError(f"{target}: expected a built model directory or a plan .json")


def _load_built(model_dir: Path, device: str, dtype, compile_decode: bool, image_tokens: int):
    """A built model loaded as users load it, wrapped for the harness."""
    import torch

    model = _load_user_model(model_dir, device, dtype)
    text = surgery.architecture(model.config).text(model.config)
    return Bench(model, surgery.text_stack(model), device, dtype if isinstance(dtype, torch.dtype) else
                 getattr(torch, dtype), compile_decode=compile_decode, image_tokens=image_tokens,
                 layer_types=list(text.layer_types))


def bench_generate(model_dir, contexts=None, new_tokens: int = 32, batch_size: int = 1, device: str = "cpu",
                   dtype: str | None = None, rounds: int = 3, seed: int = 0, progress=None) -> list[dict]:
    """Time `model.generate` end to end, as a user calls it, for a built model directory and two references.

    The references, both on the same teacher dimensions with random weights: `all-gqa`, the teacher built by mosaic
    with every layer `gqa` (same remote code, same generation path: the apples-to-apples baseline), and `stock`, the
    teacher's own transformers class in its best mode (`stock_mode`). Contexts (prompt tokens, e.g. '16k') default to
    the plan's decode workloads. Returns `time_generate`'s rows with, per row, the measured TPOT and TTFT speedups of
    the model over each reference and the plan's predicted TPOT speedup for the matching decode workload.
    """
    check_settings(rounds, dtype, 0, seed)
    contexts = listed("contexts", contexts)
    device = check_device(device)
    _check_generate_args(new_tokens, batch_size)  # before minutes of loading three models
    plan, path = _resolve(model_dir)
    if path is None:
        raise UsageError(f"{model_dir}: generate is timed on a built model directory, not a plan")
    dtype = dtype or default_dtype(device)
    lengths = [parse_workload(f"decode:{c}").seq_len if isinstance(c, str) else int(c)
               for c in (contexts or [w.seq_len for w in _decode_workloads(plan)] or [256])]
    teacher = resolve(plan.header.model.id, shipped_ok=True)  # once, for both references
    models = {"model": (_load_user_model(path, device, dtype), {}),
              "all-gqa": (random_build(teacher, device, dtype, seed), {}),
              "stock": (stock_teacher(teacher, device, dtype, seed), stock_mode(device))}
    rows = time_generate(models, lengths, new_tokens, batch_size, device, rounds, seed, progress)
    for row in rows:
        for ref in ("all-gqa", "stock"):
            for what in ("tpot", "ttft"):  # None where noise left the model's time at zero (too few new tokens)
                mine = row[f"model_{what}_ms"]
                row[f"{what}_speedup_vs_{ref}"] = row[f"{ref}_{what}_ms"] / mine if mine > 0 else None
        name = workload_name("decode", batch_size, row["context"])
        row["predicted_tpot_speedup"] = plan.predicted.get(name, {}).get("speedup")
        row["stock_mode"] = models["stock"][1].get("cache_implementation", "dynamic")
    return rows


def stock_mode(device: str) -> dict:
    """The stock teacher's best `generate` mode here: the static cache on CUDA (transformers compiles its decode
    step and replays it from a CUDA graph), the default dynamic cache on CPU (where nothing is compiled)."""
    return {"cache_implementation": "static"} if device.startswith("cuda") else {}


def random_build(teacher, device: str, dtype: str, seed: int = 0, layers=None):
    """`teacher` (an id or a `Resolved` record) with `layers` (default: the teacher's own operator in every layer,
    `surgery.teacher_ops`: gqa unless the teacher slides) as the built model class in memory (`assembly.as_built`),
    with random weights of the teacher's dimensions on `device`: what `build` would write, without its weights."""
    import torch

    with torch.device(device):
        swapped = model_from_config(resolve(teacher, shipped_ok=True).config, dtype=dtype, seed=seed)
    layers = layers or surgery.teacher_ops(swapped.config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, c in enumerate(layers):
            surgery.swap(swapped, i, c)
    return assembly.as_built(swapped, layers, seed).to(device)


def stock_teacher(teacher, device: str, dtype: str, seed: int = 0):
    """The teacher's (an id or a `Resolved` record) own transformers class with random weights of its dimensions on
    `device`."""
    import torch

    with torch.device(device):
        return model_from_config(resolve(teacher, shipped_ok=True).config, dtype=dtype, seed=seed)


def _check_generate_args(new_tokens: int, batch_size: int) -> None:
    check(integer(new_tokens), "new_tokens", f"must be an integer, got {new_tokens!r}")
    check(integer(batch_size), "batch_size", f"must be an integer, got {batch_size!r}")
    if new_tokens < 2:
        raise invalid("new_tokens", f"must be 2 or more (TPOT needs a second token), got {new_tokens}")
    if batch_size < 1:
        raise invalid("batch_size", f"must be 1 or more, got {batch_size}")


def time_generate(models: dict, contexts, new_tokens: int, batch_size: int, device: str, rounds: int = 3,
                  seed: int = 0, progress=None) -> list[dict]:
    """Median TTFT / TPOT of `generate` for each of `models` ({name: (model, extra generate kwargs)}).

    Per context: random prompts [batch_size, context]; after one untimed warm-up call per model (compilation,
    autotuning), `rounds` passes in which the models alternate, each timing a one-token generate (TTFT) and a
    `new_tokens` generate; TPOT = (that - TTFT) / (new_tokens - 1). Greedy, `min_new_tokens` = `new_tokens`, so
    every call runs the same number of steps. Returns one row per context with `{name}_ttft_ms`, `{name}_tpot_ms`
    and `{name}_tokens_per_s` (batch x new tokens over the whole call).
    """
    import torch

    _check_generate_args(new_tokens, batch_size)
    vocab = min(m.get_output_embeddings().weight.shape[0] for m, _ in models.values())
    rows = []
    for n, context in enumerate(contexts):
        gen = torch.Generator().manual_seed(seed + n)
        ids = torch.randint(3, vocab, (batch_size, context), generator=gen).to(device)

        def generate(name, tokens):
            model, extra = models[name]
            with torch.no_grad():
                _sync(device)
                start = time.perf_counter()
                model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=tokens, min_new_tokens=tokens,
                               do_sample=False, pad_token_id=0, **extra)
                _sync(device)
            return 1000 * (time.perf_counter() - start)

        for name in models:
            generate(name, new_tokens)
        samples = {name: ([], []) for name in models}
        for r in range(rounds):
            for name in models:
                samples[name][0].append(generate(name, 1))
                samples[name][1].append(generate(name, new_tokens))
            if progress:
                progress(n * rounds + r + 1, len(contexts) * rounds, f"generate c{context}")
        row = {"context": context, "batch_size": batch_size, "new_tokens": new_tokens, "device": device,
               "rounds": rounds}
        for name, (ttfts, totals) in samples.items():
            ttft, total = statistics.median(ttfts), statistics.median(totals)
            row.update({f"{name}_ttft_ms": ttft, f"{name}_tpot_ms": max(total - ttft, 0.0) / (new_tokens - 1),
                        f"{name}_tokens_per_s": 1000 * batch_size * new_tokens / total})
        rows.append(row)
    return rows


def _decode_workloads(plan: LayerPlan):
    return [w for w in map(workload_from_name, plan.predicted) if w.phase == "decode"]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def _load_user_model(model_dir: Path, device: str, dtype):
    """A built model loaded exactly as its card shows: the Auto class, `trust_remote_code=True`."""
    try:
        config = json.loads(files.read_text(model_dir / "config.json"))
    except json.JSONDecodeError as e:
        raise UsageError(f"{model_dir / 'config.json'}: not valid JSON ({e.msg})") from None
    return auto_class(config).from_pretrained(model_dir, trust_remote_code=True, dtype=dtype).eval().to(device)
