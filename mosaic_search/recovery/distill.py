"""Stage 5: recover, by distillation from the teacher, the quality a built model lost to its swaps.

Two stages, as MOSAIC-4B's recovery (off-policy realignment, then on-policy distillation):
- `offpolicy`: teacher-forced on the data; loss = KL(teacher || student) per token, plus `hidden_weight` x the
  normalised MSE between the student's and the teacher's hidden states after every decoder layer (the same measure
  `align.py` uses for one mixer, here for the whole stack at once).
- `onpolicy`: generalized knowledge distillation (GKD: Agarwal et al. 2024, "On-Policy Distillation of Language
  Models: Learning from Self-Generated Mistakes"): the student samples continuations of data prompts, the teacher
  (and, with an oracle, a second teacher of the same vocabulary, mixed with weight `oracle_weight`) scores them,
  loss = the chosen divergence on the student's own tokens, averaged with the stage-1 loss on the prompt's tokens
  (which both forward passes cover anyway), so that the few sampled tokens per step do not pull the model off what
  stage 1 aligned.

Durable and reproducible: every random choice of a step (its data rows, its samples) is seeded from (seed, step,
rank), so a checkpoint (trainable weights + optimizer state, every `checkpoint_every` steps, written whole into
`<out>.checkpoint/`) is all `resume` needs to reach the weights an uninterrupted run reaches. Under torchrun the
global batch is split across ranks and gradients averaged by PyTorch: DistributedDataParallel, or FSDP2 for a model
that does not fit one device (`distributed.wrap`).

The output loads exactly like a build (same remote code, config and plan record) and adds `distill_record.json`
(`mosaic/distill-record`): data, steps, loss per step and quality before / after (`evaluate.measure`).

Longer than the house's ~450 lines: both stages share one loop, one data sampler and one checkpoint format, and
each part is a section below (inputs, losses, durability, output).
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

from ..artifacts.distill_record import RECORD_FILE, DistillRecord
from ..artifacts.files import atomic_dir, check_output, output_path, write_json
from ..artifacts.header import Header, save, sha256_file, sha256_json
from ..artifacts.plan import PLAN_FILE, load_plan
from ..errors import StaleInputError, UsageError
from ..hf import distributed

STAGES = ("offpolicy", "onpolicy", "both")
TRAINABLE = ("replaced", "mixers", "all")
DIVERGENCES = ("forward", "reverse", "jsd")
DEFAULT_STEPS = 100  # per stage; see BENCHMARKS.md "Recovery" for the budget this buys on the embedded teacher
DEFAULT_BATCH = 4
DEFAULT_SEQ_LEN = 512
DEFAULT_LR = 3e-4  # 1e-3 recovered less on both measured plans of the embedded teacher (BENCHMARKS.md)
DEFAULT_HIDDEN_WEIGHT = 0.1
WARMUP_FRACTION = 0.1
CLIP_NORM = 1.0
ONPOLICY_TOKENS = 64  # on-policy: the student writes this many tokens after a prompt of the rest of a data window
JSD_BETA = 0.5
CHECKPOINT_EVERY = 25
# `self` data: the off-policy stage's windows, sampled once (at most this many; fewer are reused by epochs). On the
# embedded teacher, 400 fresh samples recovered 80.5% of a plan's held-out gap where its 64 calibration windows, seen
# about 6 times each, recovered 21% (BENCHMARKS.md "Recovery").
SELF_WINDOWS = 1024
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")


def distill(model: str, teacher: str | None = None, oracle: str | None = None, oracle_weight: float = 0.5,
            data: str | None = None, stage: str = "both", steps: int | None = None, tokens: int | None = None,
            lr: float = DEFAULT_LR, trainable: str = "all", hidden_weight: float = DEFAULT_HIDDEN_WEIGHT,
            divergence: str = "forward", batch_size: int = DEFAULT_BATCH, seq_len: int = DEFAULT_SEQ_LEN,
            out=None, resume: bool = False, overwrite: bool = False, checkpoint_every: int = CHECKPOINT_EVERY,
            eval_data: str | None = None, quality: bool = True, seed: int = 0, device: str = "cpu",
            parallel: str = "ddp", progress=None) -> Path:
    """Distill the mosaic model directory `model` from its teacher and write the recovered model to `out`
    (default `<model>-distilled`); return its path.

    `teacher` defaults to the one recorded in the model's plan; `data` to "self", sequences sampled from the teacher
    (a file: .txt/.jsonl/.parquet, for VLM image rows too; for `tiny-vl`, its calibration.jsonl of image and text
    rows); `steps` (per stage, default DEFAULT_STEPS) or `tokens` (per stage) sets the budget; `trainable`:
    `all` (the default: on the embedded teacher it recovered more than `mixers` at the same steps), `mixers` (every
    layer's token mixer) or `replaced` (the mixers the plan swapped in; nothing for a plan of none/drop layers). Errors before any training: bad data,
    a tokenizer or oracle vocabulary that differs from the teacher's, an existing `out` without `overwrite`.
    `quality`: measure the model before and after (`evaluate.measure`) on `eval_data` (for `tiny`: its default
    evaluation set; any other teacher: only when `eval_data` is given).
    `parallel` (under torchrun): `ddp`, a replica per process, or `fsdp`, PyTorch FSDP2 sharding the student, the
    teacher and the oracle layer by layer over the processes (for models that do not fit one device; each is read
    into host memory first, then its shards moved to `device`).
    """
    import torch

    from ..hf import data as data_mod
    from ..hf.device import check_device
    from ..hf.models import EMBEDDED, is_mosaic_dir
    from ..hf.surgery import decoder_layers
    from ..quality.evaluation import eval_set, recorded_teacher

    _choice("--stage", stage, STAGES)
    _choice("--trainable", trainable, TRAINABLE)
    _choice("--divergence", divergence, DIVERGENCES)
    _choice("--parallel", parallel, distributed.PARALLEL)
    for flag, value in (("--lr", lr), ("--batch-size", batch_size), ("--checkpoint-every", checkpoint_every)):
        if not value > 0:
            raise UsageError(f"{flag} must be positive, got {value}")
    if seq_len < 2:
        raise UsageError(f"--seq-len must be at least 2, got {seq_len}")
    if not 0 <= oracle_weight <= 1:
        raise UsageError(f"--oracle-weight must be in [0, 1], got {oracle_weight}")
    if hidden_weight < 0:
        raise UsageError(f"--hidden-weight must be at least 0, got {hidden_weight}")
    if not is_mosaic_dir(model):
        raise UsageError(f"{model}: " + ("not a model built by mosaic (mosaic build writes one)" if Path(model).is_dir()
                                         else "no such model directory"))
    teacher = teacher or recorded_teacher(model)
    out = default_out(model, out)
    check_output(out, folder=True, overwrite=overwrite)
    per_stage = _steps(steps, tokens, batch_size, seq_len)
    stages = ("offpolicy", "onpolicy") if stage == "both" else (stage,)
    plan = [s for s in stages for _ in range(per_stage)]
    tokenizer = _same_tokenizer(model, teacher, oracle)
    source = data_mod.check_source(data or data_mod.default_distill_source(teacher))
    evals = (eval_set(teacher, eval_data, tokenizer=tokenizer, param="eval_data")
             if quality and (eval_data or teacher in EMBEDDED) else None)
    check_device(device)
    ckpt = checkpoint_path(out)
    if resume and not (ckpt / "state.json").is_file():
        print(f"note: --resume: no checkpoint at {ckpt}; starting from step 0", file=sys.stderr)

    with distributed.session(device) as (rank, world, device):
        if batch_size % world:
            raise UsageError(f"--batch-size {batch_size} does not split over {world} processes")
        sharded = world > 1 and parallel == "fsdp"
        settings = dict(model=str(model), model_sha256=_model_sha256(model), teacher=teacher, oracle=oracle,
                        oracle_weight=oracle_weight, stages=list(stages), steps_per_stage=per_stage, lr=lr,
                        trainable=trainable, hidden_weight=hidden_weight, divergence=divergence,
                        batch_size=batch_size, seq_len=seq_len, seed=seed, world_size=world, parallel=parallel)
        if resume:  # before minutes of sampling: every setting but the data is known now
            _check_settings(ckpt, settings)
        student, ref, oracle_model = _load(model, teacher, oracle, "cpu" if sharded else device)
        params = _trainable(student, ref, trainable)
        wrapped, ref, oracle_model = (distributed.wrap(m, world, parallel, device, decoder_layers(m))
                                      if m is not None else None for m in (student, ref, oracle_model))
        now = dict(student.named_parameters())  # FSDP2 replaced each parameter by its shard
        params = [(n, now[n]) for n, _ in params]
        windows = _windows(source, tokenizer, teacher, ref, per_stage * batch_size, seq_len, seed, world, sharded)
        if "onpolicy" in stages and not windows.text:
            raise UsageError(f"--data {source}: every window holds images; on-policy steps need text prompts "
                             "(use --stage offpolicy, or add text rows)")
        settings = {**settings, "data": windows.describe()}
        # rank 0 measures and checkpoints; a sharded model runs only with every process taking part (each gets the
        # same numbers)
        works = rank == 0 or sharded
        before = _quality(student, ref, evals) if works else None
        opt = torch.optim.AdamW([p for _, p in params], lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        start, losses = _resume(ckpt, settings, params, opt) if resume else (0, [])
        if start and rank == 0:
            print(f"note: resuming from {ckpt} at step {start} of {len(plan)}", file=sys.stderr)
        for step in range(start, len(plan)):
            loss = _step(step, plan, settings, wrapped, student, ref, oracle_model, windows, params, opt, rank, world)
            losses.append({"step": step + 1, "stage": plan[step], "loss": loss})
            if progress and rank == 0:
                progress(step + 1, len(plan), f"{plan[step]} loss {loss:.4f}")
            if (step + 1) % checkpoint_every == 0 and step + 1 < len(plan):
                if works:
                    _checkpoint(ckpt, settings, step + 1, losses, params, opt, write=rank == 0)
                distributed.barrier(world)
        after = _quality(student, ref, evals) if works else None
        if sharded:
            state = {k: distributed.whole(v) for k, v in student.state_dict().items()}
        if rank == 0:
            if sharded:  # written from one whole copy, in host memory
                student = _load_plain(model, state)
            record = DistillRecord(header=Header.new(load_plan(Path(model) / PLAN_FILE).header.model),
                                   settings=settings, trainable_parameters=sum(p.numel() for _, p in params),
                                   losses=tuple(losses), quality={"before": before, "after": after},
                                   eval=evals.describe() if evals else None)
            _write(student, model, out, record, overwrite)
            shutil.rmtree(ckpt, ignore_errors=True)
        distributed.barrier(world)
    return out


def default_out(model: str, out=None) -> Path:
    """Where `distill` writes: `out`, or `<model>-distilled` beside the model directory."""
    return output_path(out, Path(str(Path(model)).rstrip("/") + "-distilled"), folder=True)


def checkpoint_path(out: Path) -> Path:
    """The checkpoint folder of a run writing `out`: `<out>.checkpoint` beside it (removed when the run ends)."""
    return out.with_name(out.name + ".checkpoint")


def _step(step: int, plan: list, s: dict, wrapped, student, ref, oracle, windows, params, opt, rank: int,
          world: int) -> float:
    """One optimizer step of `plan[step]`'s stage, seeded from (seed, step, rank); the loss averaged over ranks."""
    import torch

    torch.manual_seed(_seed(s["seed"], step, rank))
    rows = windows.rows(step, s["batch_size"], rank, world, text_only=plan[step] == "onpolicy")
    for group in opt.param_groups:
        group["lr"] = s["lr"] * _schedule(plan[:step].count(plan[step]), s["steps_per_stage"])
    if plan[step] == "offpolicy":
        loss = _offpolicy_loss(wrapped, ref, rows, s["hidden_weight"])
    else:
        loss = _onpolicy_loss(wrapped, student, ref, oracle, s["oracle_weight"], rows, s["divergence"],
                              s["hidden_weight"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_([p for _, p in params], CLIP_NORM)
    opt.step()
    return distributed.mean(loss.item(), world)


# ---- inputs --------------------------------------------------------------------------------------

def _choice(flag: str, value: str, choices) -> None:
    if value not in choices:
        from ..errors import did_you_mean

        raise UsageError(f'{flag} "{value}": choose one of {", ".join(choices)}{did_you_mean(value, choices)}')


def _steps(steps, tokens, batch_size: int, seq_len: int) -> int:
    if steps is not None and tokens is not None:
        raise UsageError("--steps and --tokens exclude each other")
    if tokens is not None:
        steps = math.ceil(tokens / (batch_size * seq_len))
    steps = DEFAULT_STEPS if steps is None else steps
    if steps < 1:
        raise UsageError(f"--steps / --tokens must give at least one step, got {steps}")
    return steps


def _same_tokenizer(model: str, teacher: str, oracle: str | None):
    """The teacher's tokenizer, after checking that the model's and the oracle's map every token alike."""
    from ..hf.data import tokenizer_of

    tok = tokenizer_of(teacher)
    if tok is None:
        raise UsageError(f"{teacher} has no tokenizer to read the distillation data with")
    for flag, other in (("model", model), ("--oracle", oracle)):
        theirs = tokenizer_of(other) if other else None
        if theirs is not None and theirs.get_vocab() != tok.get_vocab():
            raise UsageError(f"{flag} {other}: its tokenizer maps text to tokens differently from the teacher's; "
                             "distillation compares distributions token by token")
    return tok


def _load(model: str, teacher: str, oracle: str | None, device: str):
    """(student in train mode, teacher, oracle or None), frozen except what `_trainable` frees; the oracle's
    output vocabulary must be the teacher's."""
    from ..hf.models import load_model

    student = load_model(model, device=device)
    ref = load_model(teacher, device=device)
    vocab = ref.get_output_embeddings().weight.shape[0]
    if student.get_output_embeddings().weight.shape[0] != vocab:
        raise UsageError(f"{model} and its teacher {teacher} have different vocabularies")
    oracle_model = load_model(oracle, device=device) if oracle else None
    if oracle_model is not None and oracle_model.get_output_embeddings().weight.shape[0] != vocab:
        raise UsageError(f"--oracle {oracle}: {oracle_model.get_output_embeddings().weight.shape[0]} output tokens, "
                         f"the teacher {vocab}; the oracle must share the teacher's vocabulary")
    for m in (student, ref, oracle_model):
        if m is not None:
            m.requires_grad_(False)
    return student.train(), ref, oracle_model


class _Windows:
    """Training windows and, per step, which of them each rank trains on (a pure function of seed and step).
    On-policy steps draw from the text windows only: a prompt must be plain tokens the model can continue."""

    def __init__(self, windows, source: str, seed: int, image_token: int | None):
        self.windows, self.source, self.seed, self.image_token = windows, source, seed, image_token
        self.text = [i for i, im in enumerate(windows.images) if im is None]

    def describe(self) -> dict:
        from ..hf.data import display_name

        return {"source": display_name(self.source), "windows": len(self.windows),
                "text_windows": len(self.text), "seq_len": int(self.windows.ids.shape[1]),
                "tokens": int(sum(self.windows.lengths))}

    def rows(self, step: int, batch: int, rank: int, world: int, text_only: bool = False) -> "_Rows":
        """This rank's share of the step's global batch: epochs are seeded permutations of the windows."""
        import torch

        pool = self.text if text_only else list(range(len(self.windows)))
        picked = []
        for pos in range(step * batch, (step + 1) * batch):
            epoch, k = divmod(pos, len(pool))
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            picked.append(pool[int(order[k])])
        return _Rows(self.windows.select(picked[rank::world]), self.image_token)


def _windows(source: str, tokenizer, teacher: str, ref, want: int, seq_len: int, seed: int, world: int,
             sharded: bool) -> _Windows:
    """Training windows of `seq_len` tokens: the first `want` of the data file, or for `self` at most SELF_WINDOWS
    sequences sampled from the teacher (sampling is sequential decoding, the slowest part of a run; rank 0 samples
    and sends them, or with a `sharded` teacher every process samples the same ones in step); fewer windows than
    `want` are reused epoch after epoch."""
    from ..hf import data as data_mod
    from ..hf.surgery import dims_of

    positions = dims_of(ref.config).max_position
    if seq_len > positions:
        raise UsageError(f"--seq-len {seq_len} exceeds the teacher's {positions} positions")
    if source == data_mod.SELF:
        sampled = data_mod.shared_samples(ref, min(want, SELF_WINDOWS), seq_len, seed, world, every_rank=sharded)
        windows = data_mod.Windows.of(sampled)
    else:
        vision = None
        if getattr(ref.config, "vision_config", None) is not None:
            vision = data_mod.Vision(str(teacher), ref.config.image_token_id)
        windows = data_mod.tokenize_file(source, tokenizer, want, 0, seq_len, vision, verb="training on")[0]
    return _Windows(windows, source, seed, getattr(ref.config, "image_token_id", None))


def _trainable(student, ref, which: str) -> list:
    """(name, parameter) pairs that train, by the student's own parameter names, marked requires_grad; a one-line
    error when there are none. `replaced`: the layers whose operator differs from the teacher's own there (`ref`'s), their
    mixers and their narrower MLPs."""
    from ..hf import surgery
    from ..operators import Candidate

    if which == "all":
        chosen = {id(p) for p in student.parameters()}
    else:
        ops = [Candidate.of(layer["op"], layer.get("params"),
                            Candidate.of(layer["mlp"]["op"], layer["mlp"].get("params")) if layer.get("mlp") else None)
               for layer in student.config.mosaic["layers"]]
        own = surgery.teacher_ops(ref.config)
        chosen = set()
        for i, layer in enumerate(surgery.decoder_layers(student)):
            if which == "replaced" and ops[i] == own[i]:
                continue
            mixer = getattr(layer, "self_attn", None)
            if mixer is not None:
                chosen.update(id(p) for p in mixer.parameters())
            if which == "replaced" and ops[i].mlp:
                chosen.update(id(p) for p in layer.mlp.parameters())
    named = sorted((n, p) for n, p in student.named_parameters() if id(p) in chosen)
    if not named:
        raise UsageError(f"--trainable {which}: nothing to train (the plan's replaced layers have no parameters: "
                         "none or drop); use --trainable mixers or all")
    for _, p in named:
        p.requires_grad_(True)
    return named


def _seed(seed: int, step: int, rank: int) -> int:
    return (seed * 1_000_003 + step) * 1009 + rank


def _schedule(k: int, steps: int) -> float:
    """Linear warm-up over WARMUP_FRACTION of a stage, then cosine decay to a tenth of the peak."""
    warm = max(1, int(WARMUP_FRACTION * steps))
    if k < warm:
        return (k + 1) / warm
    return 0.1 + 0.45 * (1 + math.cos(math.pi * (k - warm) / max(1, steps - warm)))


# ---- losses --------------------------------------------------------------------------------------

def _forward(model, rows, hidden: bool):
    """(logits [b, T, V] float32, hidden states after every decoder layer or None) of teacher-forced `rows`."""
    from ..hf import surgery

    captured = []
    hooks = []
    if hidden:
        core = getattr(model, "module", model)
        for layer in surgery.decoder_layers(core):
            hooks.append(layer.register_forward_hook(
                lambda _m, _i, out: captured.append(out[0] if isinstance(out, tuple) else out)))
    try:
        logits = model(**rows.inputs(next(model.parameters()).device), use_cache=False).logits.float()
    finally:
        for h in hooks:
            h.remove()
    return logits, (captured if hidden else None)


def _offpolicy_loss(wrapped, ref, rows, hidden_weight: float):
    """KL(teacher || student) per real token, plus hidden_weight x the mean normalised MSE of the hidden states."""
    import torch

    with torch.no_grad():
        t_logits, t_hidden = _forward(ref, rows, hidden_weight > 0)
    s_logits, s_hidden = _forward(wrapped, rows, hidden_weight > 0)
    mask = rows.mask(s_logits.device)
    per = _divergence(t_logits[:, :-1], s_logits[:, :-1], "forward")
    loss = (per * mask[:, :-1]).sum() / mask[:, :-1].sum().clamp_min(1)
    if hidden_weight > 0:
        loss = loss + hidden_weight * _hidden_nmse(s_hidden, t_hidden, mask)
    return loss


def _hidden_nmse(s_hidden, t_hidden, mask):
    """The mean over layers of the normalised MSE between the student's and the teacher's hidden states [b, T, d]
    on real tokens (`mask` [b, T])."""
    import torch

    m = mask[..., None]
    return torch.stack([((s - t) * m).pow(2).sum() / (t * m).pow(2).sum().clamp_min(1e-12)
                        for s, t in zip(s_hidden, t_hidden)]).mean()


def _onpolicy_loss(wrapped, student, ref, oracle, oracle_weight: float, rows, divergence: str, hidden_weight: float):
    """Stage 1's loss on each (text) row's prompt followed by the student's own continuation of it: a position that
    predicts a sampled token gets the chosen divergence from the teacher (mixed with the oracle), one that predicts a
    prompt token keeps the teacher-forced KL(teacher || student), all averaged per token; plus the hidden-state term
    over the whole sequence. The prompt's positions come free with the forward passes the sampled ones need; without
    them the few sampled tokens per step undid part of stage 1 on the embedded teacher (GKD mixes fixed data with
    the student's samples for the same reason)."""
    import torch

    from ..hf.data import Windows

    device = next(student.parameters()).device
    ids = rows.w.ids.to(device)
    new = min(ONPOLICY_TOKENS, ids.shape[1] - 1)
    prompt = ids.shape[1] - new
    student.eval()
    with torch.no_grad():
        # exactly `new` tokens (EOS suppressed until then), so no row is ever padded
        sampled = student.generate(ids[:, :prompt], attention_mask=torch.ones_like(ids[:, :prompt]), do_sample=True,
                                   temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=new, min_new_tokens=new,
                                   pad_token_id=0, cache_implementation="dynamic")
    student.train()
    gen = _Rows(Windows.of(sampled.cpu()))
    hidden = hidden_weight > 0
    with torch.no_grad():
        t_all, t_hidden = _forward(ref, gen, hidden)
        o_all = _forward(oracle, gen, False)[0] if oracle is not None else None
    s_all, s_hidden = _forward(wrapped, gen, hidden)
    cut = prompt - 1  # positions before it predict prompt tokens, the rest the student's samples
    own = _divergence(t_all[:, cut:-1], s_all[:, cut:-1], divergence)
    if o_all is not None:
        own = (1 - oracle_weight) * own + oracle_weight * _divergence(o_all[:, cut:-1], s_all[:, cut:-1], divergence)
    loss = torch.cat([_divergence(t_all[:, :cut], s_all[:, :cut], "forward"), own], 1).mean()
    if hidden:
        loss = loss + hidden_weight * _hidden_nmse(s_hidden, t_hidden, torch.ones_like(sampled, dtype=torch.float32))
    return loss


def _divergence(t_logits, s_logits, kind: str):
    """Per position [b, n] (logits [b, n, V]): forward KL(t || s), reverse KL(s || t) or GKD's generalized
    JSD(beta)."""
    import torch
    import torch.nn.functional as F

    t, s = F.log_softmax(t_logits, -1), F.log_softmax(s_logits, -1)
    if kind == "forward":
        per = (t.exp() * (t - s)).sum(-1)
    elif kind == "reverse":
        per = (s.exp() * (s - t)).sum(-1)
    else:
        m = torch.logsumexp(torch.stack([t + math.log(JSD_BETA), s + math.log(1 - JSD_BETA)]), 0)
        per = JSD_BETA * (t.exp() * (t - m)).sum(-1) + (1 - JSD_BETA) * (s.exp() * (s - m)).sum(-1)
    return per


class _Rows:
    """One step's rows as model inputs: token ids, and the image inputs of the rows that have images (with
    Qwen3-VL's `mm_token_type_ids`, which marks the image tokens for its 3-D rotary positions)."""

    def __init__(self, windows, image_token: int | None = None):
        self.w, self.image_token = windows, image_token

    def inputs(self, device) -> dict:
        from ..hf.vision import model_inputs

        return model_inputs(self.w.ids, self.w.images, self.image_token, device)

    def mask(self, device):
        """[b, T] 1.0 on real tokens, 0.0 on the padding after a short image row."""
        import torch

        real = torch.arange(self.w.ids.shape[1])[None] < torch.tensor(self.w.lengths)[:, None]
        return real.float().to(device)


# ---- durability ----------------------------------------------------------------------------------

def _model_sha256(model: str) -> str:
    """The model directory's identity without hashing gigabytes of weights: its config and plan record."""
    return sha256_json([sha256_file(Path(model) / name) for name in ("config.json", PLAN_FILE)])


def _fingerprint(settings: dict) -> str:
    return sha256_json(settings)


def _checkpoint(ckpt: Path, settings: dict, step: int, losses: list, params, opt, write: bool = True) -> None:
    """Trainable weights and optimizer state after `step` steps, written whole (the old one stays until then). With
    FSDP2 every process calls it (the shards are gathered) and one `write`s."""
    from safetensors.torch import save_file

    tensors = {f"param/{n}": distributed.whole(p.detach()).contiguous().cpu() for n, p in params}
    state = opt.state_dict()
    for idx, st in state["state"].items():
        for key, value in st.items():
            tensors[f"opt/{idx}/{key}"] = distributed.whole(value.detach()).contiguous().cpu().reshape(value.shape)
    if not write:
        return
    with atomic_dir(ckpt) as tmp:
        save_file(tensors, str(tmp / "state.safetensors"))
        write_json(tmp / "state.json", {"fingerprint": _fingerprint(settings), "settings": settings, "step": step,
                                        "losses": losses, "param_groups": state["param_groups"]})


def _check_settings(ckpt: Path, settings: dict) -> None:
    """Refuse, naming them, the settings in which the checkpoint at `ckpt` (if any) differs from `settings`."""
    meta = ckpt / "state.json"
    if not meta.is_file():
        return
    saved, now = json.loads(meta.read_text()).get("settings", {}), json.loads(json.dumps(settings))
    differ = [f"{k} ({saved[k]} there, {now[k]} now)" for k in now if k in saved and saved[k] != now[k]]
    if differ:
        raise StaleInputError(f"{ckpt}: the checkpoint was made with other {', '.join(differ)}; rerun with the same "
                              "arguments, or without --resume to start over")


def _resume(ckpt: Path, settings: dict, params, opt) -> tuple[int, list]:
    """(step, losses) of the checkpoint at `ckpt`, loaded into params and opt; (0, []) when there is none."""
    import torch
    from safetensors.torch import load_file

    meta = ckpt / "state.json"
    if not meta.is_file():
        return 0, []
    obj = json.loads(meta.read_text())
    if obj.get("fingerprint") != _fingerprint(settings):
        _check_settings(ckpt, settings)
        raise StaleInputError(f"{ckpt}: the checkpoint was made with other settings, model, data or process count; "
                              "rerun with the same arguments, or without --resume to start over")
    tensors = load_file(str(ckpt / "state.safetensors"))
    with torch.no_grad():
        for n, p in params:
            p.copy_(distributed.shard_like(tensors[f"param/{n}"], p))
    state = {"state": {}, "param_groups": obj["param_groups"]}
    for key, value in sorted(tensors.items()):  # one order on every process: sharding is collective
        if key.startswith("opt/"):
            _, idx, name = key.split("/")
            p = params[int(idx)][1]
            state["state"].setdefault(int(idx), {})[name] = (distributed.shard_like(value, p) if value.shape == p.shape
                                                              else value)
    opt.load_state_dict(state)
    return int(obj["step"]), list(obj["losses"])


# ---- output --------------------------------------------------------------------------------------

def _load_plain(model: str, state: dict):
    """The model directory's model in host memory, holding `state` (the whole weights gathered from FSDP2 shards)."""
    from ..hf.models import load_model

    plain = load_model(model, device="cpu")
    plain.load_state_dict(state)
    return plain


def _quality(student, ref, evals):
    if evals is None:
        return None
    from ..quality.evaluation import measure

    was = student.training
    student.eval()
    try:
        return measure(student, ref, evals)
    finally:
        student.train(was)


def _write(student, model: str, out: Path, record: DistillRecord, overwrite: bool) -> None:
    """The model directory: every file of `model` but its weights (remote code, tokenizer, plan record), the
    distilled weights and config, and the distill record."""
    src = Path(model)
    weights = {f for pattern in WEIGHT_FILES for f in src.glob(pattern)}
    with atomic_dir(out, replace=overwrite) as tmp:
        for f in sorted(src.iterdir()):
            if f.is_file() and f not in weights and f.name != RECORD_FILE:
                shutil.copyfile(f, tmp / f.name)
        student.save_pretrained(tmp)
        save(record, tmp / RECORD_FILE)
