"""Stage 2: what every (layer, candidate) swap costs in quality, measured against the teacher (docs/design.md §5).

One teacher pass per calibration batch keeps the hidden state entering every layer; a swap at layer i restarts
from that state and recomputes only layers i..L-1 and the head. The teacher's logits are never kept: with the head
z = W g + b, the teacher's distribution p and u = W^T p (one hidden-sized vector per token),
    KL(p || q) = lse(z_swapped) - lse(z_teacher) - u . (g_swapped - g_teacher)
exactly, so the teacher side costs O(hidden) memory per token instead of O(vocabulary), and an unchanged model
scores exactly 0. An image window of a VLM teacher (data.py) enters layer 0 as Qwen3-VL's merged text and vision
embeddings with its 3-D mRoPE cos/sin, and every recompute adds DeepStack's visual features after the layers that
take them, as the model itself does, swapped or not; its padding is never scored. Operators that cannot reuse the
teacher's weights as they are (`spec.aligned`) are first distilled locally (align.py); their weights go into a
candidate library (library.py) that `mosaic build` loads, and the module scored is rebuilt from exactly those tensors by
`surgery.swap`, as the builder does. MLP candidates are scored under the teacher's mixer: a narrower MLP keeps the
first `width` channels of its layer's importance order, each channel's mean |activation| (down_proj's input) on the
alignment windows times the norm of its down_proj column, measured in the teacher pass; the channels go into the
library too.

Durability (library.ItemStore): each finished item is one fsync'd line in `<table>.items*.jsonl` (one file per
rank), its aligned weights written to `<table>.library.d/` before that line; `resume` reuses items whose
fingerprint (teacher weights, data, candidate, alignment settings, seed) matches. The table and library are
written atomically at the end. Each part is a section below (teacher pass, one item, inputs).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..artifacts.files import PLANS_DIR, check_not_input, check_output, claimed, json_text, output_path, write_text
from ..artifacts.header import Header, sha256_file, sha256_json, to_json
from ..artifacts.sensitivity import SensitivityEntry, SensitivityTable, load_sensitivity
from ..errors import MosaicError, UsageError, check, flags, integer, invalid, path_arg
from ..hf import distributed
from ..hf.models import slug
from ..operators import Candidate, seen_as_full
from . import align as align_mod
from . import library

logger = logging.getLogger(__name__)

SCORER_VERSION = 2  # in every item fingerprint: bump when a mixer's parameters or maths change (2: mla, gdn, kda)
DEFAULT_TOKENS = 8192
DEFAULT_SEQ_LEN = 512
DEFAULT_ALIGN_STEPS = 40
ALIGN_WINDOWS = 8  # calibration windows (disjoint from the scored ones when the data allows) that alignment trains on
HELD_OUT_ROWS = 2  # scored windows on which alignment reports its normalised MSE


def table_path(teacher: str, out=None) -> Path:
    """Where the table goes: `out`, or layer_plans/<model>/sensitivity.json."""
    path = output_path(out, Path(PLANS_DIR) / slug(teacher) / "sensitivity.json")
    if path.suffix != ".json":
        raise invalid("out", f"{path}: expected a .json file path")
    return path


def default_seq_len(cands, dims) -> int:
    """DEFAULT_SEQ_LEN, or twice the largest SWA window scored: a window as long as the calibration sequences
    is exactly full attention on them and would score 0 however much it loses on longer contexts."""
    windows = [c.kwargs["window"] for c in cands if "window" in c.kwargs]
    return min(dims.max_position, max([DEFAULT_SEQ_LEN] + [2 * w for w in windows]))


def score(teacher: str = "tiny", data: str | None = None, ops=None, tokens: int | None = None,
          seq_len: int | None = None, align_steps: int | None = None, out=None, resume: bool = False, seed: int = 0,
          device: str = "cpu", device_map: str | None = None, progress=None, dtype: str | None = None
          ) -> SensitivityTable:
    """Score every (layer, candidate) swap of `teacher` on calibration `data` and write the sensitivity table.

    `data`: a .txt/.jsonl/.parquet file or "self" (default: an embedded teacher's calibration file, else self); for
    a VLM teacher, chat rows may hold images (data.py: one window each, through the vision tower, never swapped);
    `ops`: candidates ("gqa,swa:window=128,gdn" or a list; default every operator); defaults: windows of
    `default_seq_len` tokens, DEFAULT_TOKENS tokens (at least two windows), DEFAULT_ALIGN_STEPS alignment steps.
    Under torchrun the items are split across ranks and rank 0 writes the table. `progress(done, total, what)` is
    called as items finish.
    """
    from ..hf import data as data_mod
    from ..hf import surgery
    from ..hf.device import check_device, check_dtype, default_dtype, environment
    from ..hf.models import resolve

    align_steps = _count("align_steps", DEFAULT_ALIGN_STEPS if align_steps is None else align_steps, 0)
    path_arg("teacher", teacher, what="a model id or directory")
    check(integer(seed), "seed", f"must be an integer, got {seed!r}")
    flags(resume=resume)
    check_dtype(dtype)
    source = data_mod.check_source(data or data_mod.default_source(teacher))
    path = table_path(teacher, out)
    check_not_input(library.ItemStore(path).outputs(), {"data": source, "teacher": teacher})
    check_output(path, kind=SensitivityTable.kind)
    resolved = resolve(teacher)  # once: every step below reads this record
    ref, dims = resolved.ref, resolved.dims
    teacher_ops = resolved.teacher_ops  # each layer's own operator: its reference row, scoring 0
    cands = surgery.candidates(ops, resolved.config)
    seq_len = _count("seq_len", default_seq_len(cands, dims) if seq_len is None else seq_len, 2)
    tokens = _count("tokens", max(DEFAULT_TOKENS, 2 * seq_len) if tokens is None else tokens, 1)
    check(tokens >= 2 * seq_len, "tokens", f"{tokens} is less than two `seq_len` windows (2 x {seq_len}); the KL of a "
                                             "swap is measured over two windows at least")
    if seq_len > dims.max_position:
        raise invalid("seq_len", f"{seq_len} exceeds the teacher's {dims.max_position} positions")
    if blind := seen_as_full(cands, seq_len, teacher_ops):
        logger.warning(f"warning: windows of {seq_len} tokens cannot tell {', '.join(blind)} from full attention (a "
                       "window as long as the sequence sees all of it): each scores as gqa does; score on longer "
                       "sequences (seq_len above the largest window) to measure them")
    n_score = tokens // seq_len
    windows = align_windows = None
    notes: dict = {}
    if source != data_mod.SELF:
        tok = data_mod.tokenizer_of(teacher)
        vision = None
        if resolved.arch.record.image_inputs:  # other VLMs score on text (data.py refuses images)
            vision = data_mod.Vision(str(teacher), resolved.config.image_token_id)
        windows, align_windows, notes = data_mod.tokenize_file(source, tok, n_score, ALIGN_WINDOWS, seq_len, vision)
    check_device(device)
    check(device_map is None or device != "cpu", "device_map",
          f"{device_map} spreads a teacher over GPUs and runs it there, but device is cpu: leave it out on CPU, or "
          "pass device cuda with it")
    check(device_map is None or importlib.util.find_spec("accelerate") is not None, "device_map",
          "needs the accelerate package (pip install accelerate)")

    # one claim per run: torchrun's other ranks append to rank 0's progress files
    held = claimed(path) if os.environ.get("RANK", "0") == "0" else contextlib.nullcontext()
    with held, distributed.session(device) as (rank, world, device):
        model = _load_teacher(resolved, device, device_map, dtype or default_dtype(device))
        if windows is None:
            sampled = data_mod.shared_samples(model, n_score + ALIGN_WINDOWS, seq_len, seed, world)
            windows, align_windows = data_mod.Windows.of(sampled[:n_score]), data_mod.Windows.of(sampled[n_score:])
        info = {"source": source, "tokens": sum(windows.lengths), "seq_len": seq_len, "seed": seed,
                "sha256": _sha_windows(windows, align_windows), "align_windows": len(align_windows), **notes}
        ctx = _teacher_pass(model, windows, align_windows, device, progress if rank == 0 else None,
                            measure_mlp=any(library.stores(c) and c.spec.axis == "mlp" for c in cands))
        tfp = _weights_fingerprint(model, ref)
        fps = {(layer, c): _item_fingerprint(tfp, info["sha256"], layer, c, align_steps, seed)
               for layer in range(ctx.num_layers) for c in cands if c != teacher_ops[layer]}
        store = library.ItemStore(path)
        if rank == 0:
            if not resume:
                store.clear_progress(note=True)
            finished = store.finished(fps) if resume else {}
            pending = [key for key in fps if key not in finished]
        pending = distributed.broadcast(pending if rank == 0 else None, world)
        mine = [key for k, key in enumerate(pending) if (k + key[0]) % world == rank]
        for done, (layer, cand) in enumerate(mine):
            if progress and rank == 0:
                progress(done, len(mine), f"layer {layer} {cand}")
            library.append_item(store.log(rank), _run_item(ctx, layer, cand, align_steps, seed, fps[layer, cand],
                                                           store))
        if progress and rank == 0:
            progress(len(mine), len(mine), "writing")
        distributed.barrier(world)
        if rank == 0:
            env = environment(device)
            table = _finish(store, fps, ref, env, source, info, cands, ctx, align_steps, teacher_ops)
        distributed.barrier(world)
    return table if rank == 0 else load_sensitivity(path)


def _finish(store: library.ItemStore, fps: dict, ref, env: dict, source: str, info: dict, cands, ctx, steps: int,
            teacher_ops: list) -> SensitivityTable:
    """Merge every rank's finished items into the table and the library, write both, drop the progress files;
    `teacher_ops[layer]`, the teacher's own operator there, gets the reference row scoring 0."""
    from ..hf.data import SELF

    finished = store.finished(fps)
    missing = [f"layer {layer} {c}" for layer, c in fps if (layer, c) not in finished]
    if missing:
        raise MosaicError(f"items missing after the run: {', '.join(missing[:3])}; re-run with `resume`")
    header = Header.new(ref, env=env, inputs={} if source == SELF else {"data": sha256_file(source)})
    entries = []
    for layer in range(ctx.num_layers):
        for c in cands:
            if c == teacher_ops[layer]:
                extra = {"reference": True, "block_influence": ctx.block_influence[layer]}
                entries.append(SensitivityEntry(layer, c, 0.0, 0.0, 0, extra))
                continue
            row = finished[layer, c]
            entries.append(SensitivityEntry(layer, c, row["kl"], row["delta_loss"], row["align_steps"],
                                            {**row["extra"], "fingerprint": row["fingerprint"]}))
    work = cost(ctx.dims, cands, info["tokens"], info["seq_len"], steps)
    table = SensitivityTable(header=header, metric="kl", data={**info, "cost": work}, entries=tuple(entries))
    text = json_text(to_json(table))
    if any(library.stores(c) for c in cands):  # the library first: a table on disk always has its library
        library.write_library(store, header, [(key, finished[key]) for key in fps if library.stores(key[1])],
                              hashlib.sha256(text.encode()).hexdigest())
    write_text(store.table, text)
    store.clear_progress()
    return table


def cost(dims, candidates, tokens: int, seq_len: int, align_steps: int) -> dict:
    """Work of a whole scoring run in full-forward equivalents over the scored tokens, next to the naive cost.

    Per-token matmul FLOPs from parameter counts (attention's quadratic term left out). Ours: the teacher pass
    (plus a second head for u = W^T p), then per item layers i..L-1 and the head; alignment (teacher forward on
    its windows, targets, forward + backward per step at ~3x an attention) is common to both methods. Naive: a
    whole forward of the swapped model for every scored item.
    """
    L, h = dims.num_layers, dims.hidden_size
    attn = 2 * h * dims.num_heads * dims.head_dim + 2 * h * dims.kv_dim
    layer = attn + 3 * h * dims.intermediate_size
    head = dims.vocab_size * h
    full = L * layer + head
    scored = len(candidates) - 1  # per layer, every candidate but the teacher's own (`_candidates` includes it)
    n_aligned = sum(c.aligned for c in candidates)  # the teacher's own operators are never aligned
    teacher = (full + head) / full
    items = scored * sum((L - i) * layer + head for i in range(L)) / full
    pool, step = ALIGN_WINDOWS * seq_len, align_mod.BATCH_ROWS * seq_len
    align = (pool * L * layer + L * n_aligned * (pool + 3 * align_steps * step) * attn) / (tokens * full)
    done, naive = teacher + items + align, L * scored + align
    return {"teacher_full_forwards": teacher, "items_full_forwards": items, "align_full_forwards": align,
            "done_full_forwards": done, "naive_full_forwards": naive, "ratio": done / naive}


def block_influence(table: SensitivityTable) -> dict:
    """ShortGPT's block influence (1 - cos(layer input, layer output)) per layer, as recorded in the table."""
    return {e.layer: e.extra["block_influence"] for e in table.entries if "block_influence" in e.extra}


def proxy_agreement(table: SensitivityTable) -> float | None:
    """Spearman rank correlation over layers between block influence and the measured `drop` KL (1: the proxy
    ranks layers as the measurement does), or None without both."""
    bi = block_influence(table)
    drop = {e.layer: e.kl for e in table.entries if e.candidate.op == "drop"}
    layers = sorted(set(bi) & set(drop))
    if len(layers) < 3:
        return None

    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out = [0.0] * len(values)
        for r, i in enumerate(order):
            out[i] = float(r)
        return out

    a, b = ranks([bi[i] for i in layers]), ranks([drop[i] for i in layers])
    n = len(layers)
    return 1 - 6 * sum((x - y) ** 2 for x, y in zip(a, b)) / (n * (n * n - 1))


# ---- the teacher pass ----------------------------------------------------------------------------

@dataclass
class _Batch:
    """One calibration batch: rotary cos/sin (per row), hidden states entering each layer, DeepStack injections
    (image windows), which tokens are real (None: all; padding is never scored), and the teacher's side of the KL
    (normed final hidden g, u = W^T p, log-partition lse, next-token loss) at every scored position."""

    pe: tuple
    hidden: list
    deepstack: object = None
    keep: object = None
    targets: object = None
    g: object = None
    u: object = None
    lse: object = None
    nll: object = None


@dataclass
class _Context:
    model: object
    stack: object
    batches: list
    align: list
    block_influence: list
    device: str
    head: tuple  # the LM head's weight and bias in float32
    mlp_order: list = None  # per layer, the MLP's intermediate channels most important first (None: not measured)

    @property
    def num_layers(self) -> int:
        return len(self.stack.layers)

    @property
    def dims(self):
        from ..hf import surgery

        return surgery.dims_of(self.model.config)


def _rows_per_batch(seq_len: int, device: str) -> int:
    return max(1, (16384 if device.startswith("cuda") else 4096) // seq_len)


def _teacher_pass(model, windows, align_windows, device: str, progress, measure_mlp: bool = False) -> _Context:
    import torch
    import torch.nn.functional as F

    from ..hf import surgery

    stack = surgery.text_stack(model)
    L = len(stack.layers)
    # the MLP channels' mean |activation| on the alignment windows (the scored ones when there are none)
    activity = _MlpActivity(model, L) if measure_mlp else None
    T = windows.ids.shape[1]
    rows = _rows_per_batch(T, device)
    store = _store_device(device, (len(windows) + len(align_windows)) * T * L * stack.norm.weight.shape[0] * 4)
    lm = stack.lm_head
    head = (lm.weight.detach().float(), None if lm.bias is None else lm.bias.detach().float())
    influence, batches, aligned = [0.0] * L, [], []
    groups = [(windows[s:s + rows], True) for s in range(0, len(windows), rows)]
    groups += [(align_windows[s:s + rows], False) for s in range(0, len(align_windows), rows)]
    with torch.no_grad():
        for k, (chunk, scored) in enumerate(groups):
            if progress:
                progress(k, len(groups), "teacher pass")
            if activity is not None:
                activity.on = scored == (len(align_windows) == 0)
            x = chunk.ids.to(device)
            h, pe, deepstack = stack.inputs(x, chunk.images)
            keep = None
            if min(chunk.lengths) < T:
                keep = torch.arange(T, device=device)[None] < torch.tensor(chunk.lengths, device=device)[:, None]
            batch = _Batch(pe=pe, hidden=[], deepstack=deepstack, keep=keep)
            for i, layer in enumerate(stack.layers):
                batch.hidden.append(h.to(store))
                nxt = stack.run_layer(layer, h, pe, index=i)
                if scored:
                    lost = 1 - F.cosine_similarity(h.float(), nxt.float().to(h.device), dim=-1)
                    influence[i] += float((lost if keep is None else lost[keep]).double().sum())
                h = nxt if deepstack is None else deepstack.after(i, nxt)
            if scored:
                batch.g = _final(stack, h, keep)
                targets = x[:, 1:] if keep is None else x[:, 1:][keep[:, 1:]]
                batch.targets = targets.reshape(-1).to(batch.g.device)
                batch.lse, z_target, batch.u = _head(head, batch.g, batch.targets, want_u=True)
                batch.nll = batch.lse - z_target
                batches.append(batch)
            else:
                aligned.append(batch)
    return _Context(model=model, stack=stack, batches=batches, align=aligned, device=device, head=head,
                    block_influence=[b / sum(windows.lengths) for b in influence],
                    mlp_order=None if activity is None else activity.orders())


class _MlpActivity:
    """Forward pre-hooks on every teacher MLP's down_proj summing |input| per channel while `on`; `orders()` removes
    them and gives each layer's channels by contribution (`operators.teacher.channel_importance`), most first."""

    def __init__(self, model, num_layers: int):
        from ..hf import surgery

        self.mlps = [surgery.teacher_mlp(model, i) for i in range(num_layers)]
        self.sums, self.counts, self.on = [None] * num_layers, [0] * num_layers, False
        self.handles = [mlp.down_proj.register_forward_pre_hook(self._hook(i)) for i, mlp in enumerate(self.mlps)]

    def _hook(self, i: int):
        def hook(module, args):
            if self.on:
                x = args[0].detach().abs().double()
                x = x.reshape(-1, x.shape[-1])
                self.sums[i] = x.sum(0) if self.sums[i] is None else self.sums[i] + x.sum(0)
                self.counts[i] += x.shape[0]
        return hook

    def orders(self) -> list:
        from ..operators.teacher import channel_importance, importance_order

        for h in self.handles:
            h.remove()
        return [importance_order(channel_importance(mlp, s / max(1, n))) for mlp, s, n in
                zip(self.mlps, self.sums, self.counts)]


def _store_device(device: str, nbytes: int) -> str:
    import torch

    if device.startswith("cuda") and nbytes > 0.25 * torch.cuda.mem_get_info(torch.device(device))[0]:
        return "cpu"
    return device


def _final(stack, h, keep=None):
    """Normed final hidden states at every position whose next token is real (`keep`, [b, T]; None: all),
    flattened, in float32."""
    g = stack.norm(h)[:, :-1]
    g = g.reshape(-1, g.shape[-1]) if keep is None else g[keep[:, 1:]]
    return g.float().to(stack.lm_head.weight.device)


def _head(head, g, targets, want_u: bool = False):
    """(log-partition, target logit, u = W^T softmax(z) if asked) of z = W g + b, some tokens at a time."""
    import torch
    import torch.nn.functional as F

    w, b = head
    rows = max(1, (1 << 26) // w.shape[0])  # 256 MB of float32 logits at a time
    lse, zt, us = [], [], []
    for s in range(0, g.shape[0], rows):
        z = F.linear(g[s:s + rows], w, b)
        lse.append(torch.logsumexp(z, dim=-1))
        zt.append(z.gather(1, targets[s:s + rows, None])[:, 0])
        if want_u:
            us.append(torch.softmax(z, dim=-1) @ w)
    return torch.cat(lse), torch.cat(zt), torch.cat(us) if want_u else None


# ---- one item ------------------------------------------------------------------------------------

def _run_item(ctx: _Context, layer: int, cand: Candidate, steps: int, seed: int, fp: str,
              store: library.ItemStore) -> dict:
    """Align (if the operator needs it), swap in, score; the log line of the item."""
    import torch

    from ..hf import surgery

    steps = steps if cand.aligned else 0
    extra, weights, part = {}, None, None
    if library.stores(cand) and cand.spec.axis == "mlp":
        weights = {"channels": ctx.mlp_order[layer][:cand.kwargs["width"]].clone()}
        part = store.save_part(layer, cand, weights, fp)
    elif cand.aligned:
        item_seed = int(hashlib.sha256(f"{seed}/{layer}/{cand}".encode()).hexdigest()[:8], 16)
        with _seeded(item_seed, ctx.device):
            mixer = surgery.build_mixer(ctx.model, layer, cand)
        norm = surgery.teacher_layer(ctx.model, layer).input_layernorm
        attention = surgery.teacher_attention(ctx.model, layer)
        pool = ctx.align or ctx.batches
        hidden = torch.cat([b.hidden[layer] for b in pool])
        pe = tuple(torch.cat([ctx.stack.layer_pe(b.pe, layer)[k] for b in pool]) for k in range(2))
        train = align_mod.teacher_pairs(norm, attention, hidden, pe)
        first = ctx.batches[0]
        held = align_mod.teacher_pairs(norm, attention, first.hidden[layer][:HELD_OUT_ROWS],
                                       tuple(t[:HELD_OUT_ROWS] for t in ctx.stack.layer_pe(first.pe, layer)))
        extra.update(align_mod.align(mixer, train, held, steps, item_seed))
        weights = {k: v.detach().cpu().contiguous() for k, v in mixer.state_dict().items()}
        del mixer, train, held
        part = store.save_part(layer, cand, weights, fp)
    surgery.swap(ctx.model, layer, cand, weights=weights)
    try:
        kl, delta_loss = _evaluate(ctx, layer)
    finally:
        surgery.restore(ctx.model, layer)
    return {"layer": layer, **cand.to_json(), "kl": kl, "delta_loss": delta_loss, "align_steps": steps,
            "fingerprint": fp, "extra": extra, "weights": part}


def _evaluate(ctx: _Context, start: int) -> tuple[float, float]:
    """Mean KL(teacher || model) and mean next-token loss change, running layers start..L-1 of the current model."""
    import torch

    kl = dloss = 0.0
    n = 0
    with torch.no_grad():
        for b in ctx.batches:
            h = b.hidden[start].to(ctx.device)
            for j in range(start, ctx.num_layers):
                h = ctx.stack.run_layer(ctx.stack.layers[j], h, b.pe, index=j)
                if b.deepstack is not None:  # as the model does after every layer, swapped or not
                    h = b.deepstack.after(j, h)
            g = _final(ctx.stack, h, b.keep)
            lse, z_target, _ = _head(ctx.head, g, b.targets)
            kl += float(((lse - b.lse) - ((g - b.g) * b.u).sum(-1)).double().sum())
            dloss += float(((lse - z_target) - b.nll).double().sum())
            n += g.shape[0]
    return max(0.0, kl / n), dloss / n


@contextmanager
def _seeded(seed: int, device: str):
    import torch

    devices = [torch.device(device).index or 0] if device.startswith("cuda") else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


# ---- inputs, fingerprints, ranks ------------------------------------------------------------------

def _count(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise invalid(name, f"must be an integer >= {minimum}, got {value!r}")
    return value


def _load_teacher(teacher, device: str, device_map, dtype: str):
    """The teacher (a `Resolved` record) loaded for scoring: on `device`, or spread by `device_map`."""
    import torch

    from ..hf.models import EMBEDDED, auto_class, load_model

    if device_map is None or teacher.id in EMBEDDED:
        model = load_model(teacher, dtype=dtype, device=device)
    else:
        try:
            model = auto_class(teacher.config).from_pretrained(teacher.id, dtype=getattr(torch, dtype),
                                                               device_map=device_map).eval()
        except (OSError, ValueError) as e:
            raise UsageError(f"cannot load {teacher.id} with `device_map` {device_map}: "
                             f"{str(e).splitlines()[0][:160]}") from None
    if getattr(model.config, "_attn_implementation", None) == "eager":
        model.set_attn_implementation("sdpa")  # eager attention is not causal without a mask; sdpa is
    from ..hf.surgery import own_mixers

    own_mixers(model)  # a sliding window is not applied without a mask either
    return model


def _weights_fingerprint(model, ref) -> str:
    """The config's fingerprint plus 64 evenly spaced values of every parameter (exact, device independent)."""
    import torch

    h = hashlib.sha256(ref.config_sha256.encode())
    for name, p in model.named_parameters():
        if p.device.type == "meta":
            continue
        flat = p.detach().reshape(-1)
        k = min(64, flat.numel())
        idx = torch.arange(k, device=flat.device) * (flat.numel() - 1) // max(1, k - 1)  # exact integer steps
        h.update(f"{name}:{tuple(p.shape)}:{p.dtype}".encode())
        h.update(flat[idx].float().cpu().numpy().tobytes())
    return h.hexdigest()


def _item_fingerprint(teacher_fp: str, data_sha: str, layer: int, cand: Candidate, steps: int, seed: int) -> str:
    aligned = cand.aligned
    obj = {"version": SCORER_VERSION, "teacher": teacher_fp, "data": data_sha, "layer": layer, "candidate": str(cand),
           "seed": seed,
           "align": {"steps": steps, "lr": align_mod.LR, "rows": align_mod.BATCH_ROWS} if aligned else None}
    return sha256_json(obj)[:16]


def _sha_windows(windows, align_windows) -> str:
    """The calibration data's fingerprint: token ids, and for image windows their lengths and image inputs."""
    h = hashlib.sha256(f"{tuple(windows.ids.shape)}/{tuple(align_windows.ids.shape)}".encode())
    h.update(windows.ids.numpy().tobytes())
    h.update(align_windows.ids.numpy().tobytes())
    for w in (windows, align_windows):
        for length, images in zip(w.lengths, w.images):
            if images is not None:
                h.update(f"{length}/{images['image_grid_thw'].tolist()}".encode())
                h.update(images["pixel_values"].float().numpy().tobytes())
    return h.hexdigest()
