"""Stage 5: recover, by distillation from the teacher, the quality a built model lost to its swaps.

Two stages, as MOSAIC-4B's recovery (off-policy realignment, then on-policy distillation):
- `offpolicy`: teacher-forced on the data; loss = KL(teacher || student) per token, plus `hidden_weight` x the
  normalised MSE between the student's and the teacher's hidden states after every decoder layer.
- `onpolicy`: generalized knowledge distillation (GKD): the student samples continuations of data prompts (text
  windows, and image chat rows answered anew after their last question), the teacher (and, with an oracle, a second
  teacher of the same vocabulary, mixed with weight `oracle_weight`) scores them, loss = the chosen divergence on
  the student's own tokens, averaged with the stage-1 loss on the prompt's tokens, so that the few sampled tokens
  per step do not pull the model off what stage 1 aligned (losses.py).

Durable and reproducible: every random choice of a step (its batch, its samples) is seeded from (seed, step, rank),
so a checkpoint (checkpoint.py) is all `resume` needs to reach the weights an uninterrupted run reaches. Under
torchrun the global batch is split across ranks and gradients averaged by PyTorch: DistributedDataParallel, or FSDP2
for a model that does not fit one device (`distributed.wrap`). The settings are one record (settings.py); the data
(batches.py), the models (loading.py), the loop (loop.py) and the output (output.py) each have their own module.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from pathlib import Path

from ..artifacts.distill_record import DistillRecord
from ..artifacts.files import check_not_input, check_output
from ..artifacts.header import Header
from ..artifacts.plan import PLAN_FILE, load_plan
from ..errors import UsageError, check, flags, invalid, path_arg
from ..hf import distributed
from ..hf.device import check_dtype
from . import checkpoint, loading
from .batches import training_batches
from .checkpoint import checkpoint_path  # noqa: F401  (the CLI's: where a run keeps its checkpoint)
from .loop import Trainer, optimizer
from .output import default_out, plain_copy, write_model  # noqa: F401  (default_out: the CLI's)
from .settings import DEFAULT_STEPS  # noqa: F401  (the CLI's help)
from .settings import DEFAULTS as D
from .settings import PARAMETERS, DistillSettings

log = logging.getLogger(__name__)


def distill(model: str, teacher: str | None = D.teacher, oracle: str | None = D.oracle,
            oracle_weight: float = D.oracle_weight, data: str | None = D.data, stage: str = D.stage,
            steps: int | None = D.steps, tokens: int | None = D.tokens, lr: float = D.lr, trainable: str = D.trainable,
            hidden_weight: float = D.hidden_weight, divergence: str = D.divergence, batch_size: int = D.batch_size,
            seq_len: int = D.seq_len, out=None, resume: bool = False, overwrite: bool = False,
            checkpoint_every: int = D.checkpoint_every, eval_data: str | None = D.eval_data,
            quality: bool = D.quality, seed: int = D.seed, device: str = "cpu", parallel: str = D.parallel,
            dtype: str | None = None, progress=None) -> Path:
    """Distill the mosaic model directory `model` from its teacher and write the recovered model to `out`
    (default `<model>-distilled`); return its path. Every keyword but `out`, `resume`, `overwrite`, `device`, `dtype`
    and `progress` is a field of `DistillSettings` (its docstring and defaults).

    `teacher` defaults to the one recorded in the model's plan; `data` to "self", sequences sampled from the teacher
    (a file: .txt/.jsonl/.parquet, for VLM image rows too; for `tiny-vl`, its calibration.jsonl of image and text
    rows); `trainable`: `all`, `mixers` (every layer's token mixer)
    or `replaced` (the mixers and MLPs the plan swapped in; nothing for a plan of none/drop layers). Errors before any
    training: bad settings or data, a tokenizer or oracle vocabulary that differs from the teacher's, an existing
    `out` without `overwrite`. `quality`: measure the model before and after (`evaluate.measure`) on `eval_data`
    (for `tiny`: its default evaluation set; any other teacher: only when `eval_data` is given).
    `parallel` (under torchrun): `ddp`, a replica per process, or `fsdp`, PyTorch FSDP2 sharding the student, the
    teacher and the oracle layer by layer over the processes (for models that do not fit one device; each is read
    into host memory first, then its shards moved to `device`).
    Training runs in float32 (its optimizer states and updates need it); the output is written in `dtype`
    (float32, bfloat16 or float16), by default the dtype of the model directory's weights, so it loads as the build did.
    """
    given = locals()
    settings = DistillSettings(**{name: given[name] for name in PARAMETERS})
    return run(model, settings, out=out, resume=resume, overwrite=overwrite, device=device, dtype=dtype,
               progress=progress)


def run(model: str, settings: DistillSettings, out=None, resume: bool = False, overwrite: bool = False,
        device: str = "cpu", dtype: str | None = None, progress=None) -> Path:
    """`distill` with its settings as one record."""
    import torch

    from ..hf import data as data_mod
    from ..hf.device import check_device
    from ..hf.models import EMBEDDED, is_mosaic_dir
    from ..hf.surgery import decoder_layers
    from ..quality.evaluation import eval_set, recorded_teacher, warn_if_blind

    s = settings
    flags(resume=resume, overwrite=overwrite)
    path_arg("model", model, what="a model directory")
    dtype = dtype or _saved_dtype(model)
    check_dtype(dtype)
    if not is_mosaic_dir(model):
        raise UsageError(f"{model}: " + ("not a model built by mosaic (mosaic build writes one)" if Path(model).is_dir()
                                         else "no such model directory"))
    s = dataclasses.replace(s, teacher=s.teacher or recorded_teacher(model))
    out = default_out(model, out)
    check_not_input([out, checkpoint.checkpoint_path(out)], {"model": model, "teacher": s.teacher, "oracle": s.oracle,
                                                             "data": s.data, "eval_data": s.eval_data})
    check_output(out, folder=True, overwrite=overwrite)
    tokenizer = loading.same_tokenizer(model, s.teacher, s.oracle)
    source = data_mod.check_source(s.data or data_mod.default_distill_source(s.teacher))
    evals = (eval_set(s.teacher, s.eval_data, tokenizer=tokenizer, param="eval_data")
             if s.quality and (s.eval_data or s.teacher in EMBEDDED) else None)
    if evals is not None:  # the quality before and after is measured on these windows
        warn_if_blind(model, s.teacher, int(evals.windows.shape[1]))
    check_device(device)
    ckpt = checkpoint.checkpoint_path(out)
    if resume and not checkpoint.exists(ckpt):
        log.info("note: --resume: no checkpoint at %s; starting from step 0", ckpt)

    with distributed.session(device) as (rank, world, device):
        check(s.batch_size % world == 0, "batch_size", f"{s.batch_size} does not split over {world} processes")
        sharded = world > 1 and s.parallel == "fsdp"
        recorded = s.recorded(model, checkpoint.model_sha256(model), world)
        if resume:  # before minutes of sampling: every setting but the data is known now
            checkpoint.check(ckpt, recorded)
        student, ref, oracle_model = loading.load(model, s.teacher, s.oracle, "cpu" if sharded else device)
        params = loading.trainable(student, ref, s.trainable)
        wrapped, ref, oracle_model = (distributed.wrap(m, world, s.parallel, device, decoder_layers(m))
                                      if m is not None else None for m in (student, ref, oracle_model))
        now = dict(student.named_parameters())  # FSDP2 replaced each parameter by its shard
        params = [(n, now[n]) for n, _ in params]
        batches = training_batches(source, tokenizer, s.teacher, ref, s.steps_per_stage * s.batch_size, s.seq_len,
                                   s.seed, world, sharded)
        if "onpolicy" in s.stages and not batches.prompts:
            late = batches.notes.get("replies_past_seq_len")
            raise invalid("data", f"{source}: no window can prompt on-policy steps (they need text, or image chat "
                                  "rows that end with the assistant's text reply within `seq_len`"
                                  + (f"; {late} rows' replies start past `seq_len` {s.seq_len}" if late else "")
                                  + "); use stage offpolicy, or add such rows")
        recorded = {**recorded, "data": batches.describe()}
        # rank 0 measures and checkpoints; a sharded model runs only with every process taking part (each gets the
        # same numbers)
        works = rank == 0 or sharded
        before = _quality(student, ref, evals) if works else None
        opt = optimizer(params, s.lr)
        start, losses = checkpoint.restore(ckpt, recorded, params, opt) if resume else (0, [])
        if start and rank == 0:
            log.info("note: resuming from %s at step %d of %d", ckpt, start, len(s.step_stages))
        trainer = Trainer(s, loading.Models(student, wrapped, ref, oracle_model), batches, params, opt, rank, world)
        losses = trainer.train(start, losses, progress, lambda step, done: checkpoint.save(
            ckpt, recorded, step, done, params, opt, write=rank == 0) if works else None)
        after = _quality(student, ref, evals) if works else None
        if sharded:
            state = {k: distributed.whole(v) for k, v in student.state_dict().items()}
        if rank == 0:
            if sharded:  # written from one whole copy, in host memory
                student = plain_copy(model, state)
            # the output's dtype is not a training setting (a resumed run may write another): kept beside them
            record = DistillRecord(header=Header.new(load_plan(Path(model) / PLAN_FILE).header.model),
                                   settings={**recorded, "dtype": dtype},
                                   trainable_parameters=sum(p.numel() for _, p in params),
                                   losses=tuple(losses), quality={"before": before, "after": after},
                                   eval=evals.describe() if evals else None)
            write_model(student.to(getattr(torch, dtype)), model, out, record, overwrite)
            shutil.rmtree(ckpt, ignore_errors=True)
        distributed.barrier(world)
    return out


def _quality(student, ref, evals):
    """The student's measured quality against the teacher on `evals` (None without), in eval mode."""
    if evals is None:
        return None
    from ..quality.evaluation import measure

    was = student.training
    student.eval()
    try:
        return measure(student, ref, evals)
    finally:
        student.train(was)


def _saved_dtype(model: str) -> str:
    """The dtype a model directory's weights were written in (its config's `dtype`; float32 where it names none)."""
    try:
        config = json.loads((Path(model) / "config.json").read_text())
    except (OSError, ValueError):
        return "float32"  # no readable config: `is_mosaic_dir` refuses the directory next
    return config.get("dtype") or config.get("torch_dtype") or "float32"
