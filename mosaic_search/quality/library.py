"""The candidate library: the aligned weights the scorer trained and the channels each narrower MLP it scored keeps
(`channels`, int64, the first `width` of the layer's importance order), which `mosaic build` ships, and the scorer's
per-item progress files they are merged from.

Format: a safetensors file whose tensor keys are `layer{L}/{candidate}/{param}`, with `L` the 0-based decoder layer,
`candidate` the candidate's string (`str(Candidate)`: `mla:rank=256`, `gdn`, `swa:window=1024`) and `param` a key
of that mixer's own state dict (`kv_down.weight`, `o_proj.weight`, ...), e.g. `layer3/mla:rank=256/kv_down.weight`.
Beside it, a JSON sidecar of the same stem (`x.library.safetensors` -> `x.library.json`), the schema record
`CandidateLibrary`: the `model` block (checked against the teacher like any artifact's), `scores_sha256`
(the sha256 of the sensitivity table file written with it) and one entry per aligned item. An entry present for a
layer replaces the teacher initialisation of that layer's mixer; with a library given, every layer whose operator
is `aligned` must have one. Without one given, build takes the library whose `scores_sha256` is the hash of the
table the plan was solved on (the plan's `inputs.scores`), looked up beside the plan and in layer_plans/<model>/.

Progress (`ItemStore`): each finished scoring item is one durable line in `<table>.items*.jsonl` (one log per
rank), its aligned weights a file in `<table>.library.d/` written before that line; `write_library` merges them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
from pathlib import Path

from ..artifacts.files import PLANS_DIR, append_line, atomic_path
from ..artifacts.header import Header, ModelRef, check_same_model, save, sha256_file
from ..artifacts.library import CandidateLibrary, LibraryEntry, load_library_sidecar
from ..artifacts.plan import LayerPlan
from ..artifacts.sensitivity import load_sensitivity
from ..errors import UsageError
from ..hf.models import slug
from ..operators import Candidate

logger = logging.getLogger(__name__)


def library_path(table: str | os.PathLike) -> Path:
    """The candidate library written beside a sensitivity table (its JSON sidecar has the same stem)."""
    return Path(table).with_suffix(".library.safetensors")


def library_of(table: str | os.PathLike) -> Path | None:
    """The library beside a sensitivity table when it was written with that very table (its sidecar names the table
    file's sha256), else None: a library an earlier run left beside a table re-scored without aligned candidates
    belongs to the earlier table."""
    path = library_path(table)
    try:
        return path if path.is_file() and load_library_sidecar(path.with_suffix(".json")).scores_sha256 == \
            sha256_file(table) else None
    except (UsageError, OSError):
        return None


def library_key(layer: int, candidate: Candidate, param: str) -> str:
    """The tensor key of one parameter of one candidate's aligned weights in a candidate library."""
    return f"layer{layer}/{candidate}/{param}"


def load_library_entry(path: str | os.PathLike, layer: int, candidate: Candidate) -> dict | None:
    """The aligned state dict ({param: tensor}) of `candidate` at `layer` in a candidate library, or None if it has
    none. Raises UsageError (exit 2) for a missing or unreadable library file."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such candidate library")
    prefix = library_key(layer, candidate, "")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith(prefix)]
            return {k[len(prefix):]: f.get_tensor(k) for k in keys} or None
    except (SafetensorError, OSError) as e:
        if path.suffix == ".json":  # a library's JSON sidecar, given in its place
            beside = path.with_suffix(".safetensors")
            raise UsageError(f"{path}: a JSON file, not a safetensors candidate library"
                             + (f"; the library is {beside}" if beside.is_file() else "")) from None
        raise UsageError(f"{path}: not a readable safetensors library ({str(e).splitlines()[0][:120]})") from None


def find_library(plan: LayerPlan, plan_path: Path | None = None) -> Path | None:
    """The candidate library written together with the table `plan` was solved on, or None.

    Looked up beside `plan_path` and in layer_plans/<model>/ (where `score` writes by default), by the table's
    sha256 recorded in both the plan (`inputs.scores`) and the library's sidecar (`scores_sha256`).
    """
    want = plan.header.inputs.get("scores")
    if not want:
        return None
    folders = [plan_path.parent] if plan_path is not None else []
    folders.append(Path(PLANS_DIR) / slug(plan.header.model.id))
    for folder in dict.fromkeys(f.resolve() for f in folders if f.is_dir()):
        for sidecar in sorted(folder.glob("*.json")):
            try:
                side = load_library_sidecar(sidecar)
            except UsageError:
                continue  # not ours to judge here: only a matching sidecar counts
            library = sidecar.with_suffix(".safetensors")
            if side.scores_sha256 == want and library.is_file():
                return library
    return None


def _stored(layers) -> list[tuple[int, Candidate, str]]:
    """(layer, candidate part, prefix) of every part of a plan's layers whose weights the library holds: an aligned
    mixer's (no prefix) and a narrower MLP's channels (under `surgery.MLP_PREFIX`, as `surgery.split_weights` reads)."""
    from ..hf.surgery import MLP_PREFIX

    out = []
    for i, c in enumerate(layers):
        if c.mixer is not None and stores(c.mixer):
            out.append((i, c.mixer, ""))
        mlp = c.mlp_candidate
        if mlp is not None and stores(mlp):
            out.append((i, mlp, "" if c.mixer is None else MLP_PREFIX))
    return out


def library_weights(library, layers, ref: ModelRef, allow_stale: bool, scores_sha256: str | None = None) -> dict:
    """{layer: state dict} from `library` (a path, or None) for a plan's `layers` of model `ref`: aligned mixer
    weights, and the channels a narrower MLP keeps under `surgery.MLP_PREFIX`.

    None warns on stderr when some layer's part is in the library (an aligned operator, a narrower MLP) and returns
    {}. Raises StaleInputError (exit 4) for a library of another model unless `allow_stale`, UsageError (exit 2) for
    a broken sidecar or library and for a part the library has no weights for; warns when the library was written
    with another table than `scores_sha256`, the one the plan was solved on.
    """
    stored = _stored(layers)
    if library is None:
        if stored:
            ops = sorted({c.op for _, c, _ in stored})
            mlp = " (narrower MLPs keep channels by weight norms, not by importance on calibration data)" \
                if "mlp" in ops else ""
            logger.warning(f"warning: no candidate library (--library, or one written with this plan's scores): "
                           f"{', '.join(ops)} layers start from the teacher initialisation, without aligned "
                           f"weights{mlp}")
        return {}
    path = Path(library)
    written_with = _check_sidecar(path, ref, allow_stale)
    if written_with and scores_sha256 and written_with != scores_sha256:
        logger.warning(f"warning: {path} was written with another sensitivity table than the one the plan was solved "
                       "on; its weights were aligned for that table's data")
    weights, missing = {}, []
    for i, c, prefix in stored:
        found = load_library_entry(path, i, c)
        if found is None:
            missing.append(f"layer {i} {c}")
            continue
        weights.setdefault(i, {}).update({prefix + k: v for k, v in found.items()})
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UsageError(f"{path}: no aligned weights for {', '.join(missing[:3])}{more}; re-run score for these "
                         "candidates or build without `library`")
    return weights


def _check_sidecar(path: Path, ref: ModelRef, allow_stale: bool) -> str | None:
    """Refuse a library made for another model (StaleInputError, exit 4) or a broken sidecar (exit 2); return the
    sha256 of the table it was written with, when its sidecar records one."""
    sidecar = path.with_suffix(".json")
    if path.suffix != ".safetensors" or not path.is_file() or not sidecar.is_file():
        return None  # no library there (the read says so), or none with a sidecar to check
    side = load_library_sidecar(sidecar)
    check_same_model(ref, side.header.model, f"library {path}", allow_stale)
    return side.scores_sha256 or None


# ---- writing: the scorer's per-item files and their merge -----------------------------------------

def append_item(path: Path, row: dict) -> None:
    """One finished item's record as one durable line of a JSONL log (`files.append_line`)."""
    append_line(path, json.dumps(row, sort_keys=True))


class ItemStore:
    """A sensitivity table's companions: per-rank item logs, per-item weights, the merged library and its sidecar."""

    def __init__(self, table: Path):
        self.table = table
        self.library = library_path(table)
        self.parts = table.with_suffix(".library.d")

    def outputs(self) -> list[Path]:
        """Every file and folder a scoring run writes for this table (rank 0's log standing for every rank's)."""
        return [self.table, self.library, self.library.with_suffix(".json"), self.log(0), self.parts]

    def log(self, rank: int) -> Path:
        """The item log of one rank."""
        return self.table.with_suffix(".items.jsonl" if rank == 0 else f".items-rank{rank}.jsonl")

    def logs(self) -> list[Path]:
        """Every rank's item log present now."""
        return sorted(self.table.parent.glob(f"{self.table.stem}.items*.jsonl"))

    def clear_progress(self, note: bool = False) -> None:
        """Forget unfinished runs: their item logs and per-item weights (`note`: say so on stderr)."""
        logs = self.logs()
        if note and logs:
            logger.info(f"note: starting afresh; {self.table}'s unfinished earlier run is discarded (--resume keeps "
                        "it)")
        for log in logs:
            log.unlink(missing_ok=True)
        shutil.rmtree(self.parts, ignore_errors=True)

    def save_part(self, layer: int, cand: Candidate, weights: dict, fp: str) -> str:
        """Write one item's aligned weights ({param: tensor}) atomically; return the file's name in `parts`."""
        from safetensors.torch import save_file

        name = f"layer{layer}-{str(cand).replace(':', '-').replace('=', '')}-{fp}.safetensors"
        with atomic_path(self.parts / name) as tmp:
            save_file(weights, str(tmp), metadata={"fingerprint": fp})
        return name

    def weights_source(self, layer: int, cand: Candidate, row: dict):
        """Where a finished item's weights are: its own file, else the previous library; None if neither."""
        if row.get("weights") and (self.parts / row["weights"]).is_file():
            return _Weights(self.parts / row["weights"])
        if row.get("in_library") and self.library.is_file():
            return _Weights(self.library, library_key(layer, cand, ""))
        return None

    def finished(self, fps: dict) -> dict:
        """{(layer, candidate): record} of the items whose fingerprint is `fps[layer, candidate]`, from a previous
        table and library and from every rank's log (the last matching record wins); an aligned item counts only
        while its weights can still be read."""
        rows: dict = {}
        try:
            old = load_sensitivity(self.table) if self.table.is_file() else None
        except UsageError:
            old = None
        try:
            side = load_library_sidecar(self.library.with_suffix(".json"))
            library = {(e.layer, str(e.candidate), e.fingerprint) for e in side.entries}
        except UsageError:  # none, or damaged: its weights are not reused
            library = set()
        for e in old.entries if old else ():
            fp = e.extra.get("fingerprint")
            extra = {k: v for k, v in e.extra.items() if k != "fingerprint"}
            rows.setdefault((e.layer, e.candidate), []).append({
                "kl": e.kl, "delta_loss": e.delta_loss, "align_steps": e.align_steps, "fingerprint": fp,
                "extra": extra, "in_library": (e.layer, str(e.candidate), fp) in library})
        for log in self.logs():
            for line in log.read_bytes().decode(errors="replace").splitlines():  # a damaged line is skipped below
                try:
                    row = json.loads(line)
                    rows.setdefault((row["layer"], Candidate.of(row["op"], row.get("params"))), []).append(row)
                except (ValueError, KeyError, TypeError, UsageError):
                    continue  # a line cut short by a kill
        done = {}
        for key, fp in fps.items():
            for row in reversed(rows.get(key, [])):
                if row.get("fingerprint") == fp and (not stores(key[1]) or self.weights_source(*key, row)):
                    done[key] = row
                    break
        return done


def stores(candidate: Candidate) -> bool:
    """Whether the scorer keeps this scored candidate's weights in the library: an aligned mixer's (fewer KV heads
    included), or the channels of a narrower MLP (nomlp has none)."""
    return candidate.aligned or (candidate.spec.axis == "mlp" and bool(candidate.params))


def write_library(store: ItemStore, header: Header, items, scores_sha256: str) -> None:
    """Stream every aligned item's weights (`items`: [((layer, candidate), record)]) into `store.library`, then
    write its sidecar, which names the table file it belongs to by `scores_sha256`: a plan records the same hash
    of the table it was solved on, so build finds the library by itself."""
    tensors = []
    for (layer, cand), row in items:
        source = store.weights_source(layer, cand, row)
        for param in source.params():
            tensors.append((library_key(layer, cand, param), source, param))
    with atomic_path(store.library) as tmp:
        _stream_safetensors(tmp, tensors)
    entries = tuple(LibraryEntry(layer, cand, row["align_steps"], row["fingerprint"], row["extra"])
                    for (layer, cand), row in items)
    save(CandidateLibrary(header=header, scores_sha256=scores_sha256, entries=entries),
         store.library.with_suffix(".json"))


_ST_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def _stream_safetensors(path: Path, tensors) -> None:
    """Write a safetensors file one tensor at a time, so a library larger than memory can be merged."""
    import torch

    header, offset = {}, 0
    for key, source, param in tensors:
        dtype, shape, nbytes = source.meta(param)
        header[key] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:  # `path` is atomic_path's temporary file
        f.write(len(raw).to_bytes(8, "little") + raw)
        for key, source, param in tensors:
            t = source.tensor(param).contiguous()
            f.write(t.reshape(-1).view(torch.uint8).numpy().tobytes())


class _Weights:
    """Aligned weights of one item, read lazily from a per-item file or a previous library."""

    def __init__(self, path: Path, prefix: str = ""):
        self.path, self.prefix = path, prefix

    def params(self) -> list[str]:
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return sorted(k[len(self.prefix):] for k in f.keys() if k.startswith(self.prefix))

    def meta(self, param: str):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            view = f.get_slice(self.prefix + param)
            dtype, shape = view.get_dtype(), list(view.get_shape())
        return dtype, shape, _ST_BYTES[dtype] * math.prod(shape)

    def tensor(self, param: str):
        from safetensors import safe_open

        with safe_open(str(self.path), framework="pt") as f:
            return f.get_tensor(self.prefix + param)
