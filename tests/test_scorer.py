"""`mosaic score`: KL of every (layer, candidate) swap, local alignment, resume after kill -9, torchrun, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import tiny_model

from mosaic_search import builder
from mosaic_search.artifacts.header import Header, ModelRef, save, sha256_file, to_json
from mosaic_search.artifacts.library import CandidateLibrary, load_library_sidecar
from mosaic_search.artifacts.plan import LayerPlan
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable, load_sensitivity
from mosaic_search.cli import main
from mosaic_search.errors import UsageError
from mosaic_search.hf import data, surgery
from mosaic_search.hf.models import load_model
from mosaic_search.operators import Candidate, default_candidates
from mosaic_search.quality import scorer
from mosaic_search.quality.library import library_path, load_library_entry

SEQ = 32
ARGS = dict(ops="gqa,swa:window=32,swa:window=2,mla:rank=8,gdn,drop", tokens=64, seq_len=SEQ, align_steps=12, seed=0)
CLI_ARGS = ["score", "--ops", ARGS["ops"], "--tokens", "64", "--seq-len", str(SEQ), "--align-steps", "12"]
# one thread: these models are tiny, and a second thread only waits on a core another process may hold
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(Path(__file__).resolve().parents[1])}


pytestmark = pytest.mark.usefixtures("one_thread")


def _tokenizer():
    """A word-level tokenizer over the tiny vocabulary, built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(97)}, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1", eos_token="w2")
    t.chat_template = "{% for m in messages %}{{ m['role'] }} {{ m['content'] }} {% endfor %}"
    return t


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> str:
    """A saved 3-layer random Qwen3 with a tokenizer."""
    path = tmp_path_factory.mktemp("teacher") / "qwen3"
    tiny_model("qwen3").save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def reference(teacher, tmp_path_factory):
    """An uninterrupted single-process run with ARGS, and where it wrote."""
    out = tmp_path_factory.mktemp("reference") / "s.json"
    return scorer.score(teacher, out=out, **ARGS), out


def _rows(table):
    return [(e.layer, str(e.candidate), e.kl, e.delta_loss, e.align_steps, e.extra) for e in table.entries]


def _cell(table, layer, cand):
    return next(e for e in table.entries if e.layer == layer and str(e.candidate) == cand)


def test_reference_zero_swaps_positive_and_alignment(reference):
    table, out = reference
    assert _rows(load_sensitivity(out)) == _rows(table)
    cands = [str(c) for c in dict.fromkeys(e.candidate for e in table.entries)]
    assert cands == ARGS["ops"].split(",") and len(table.entries) == 3 * len(cands)
    assert table.data["source"] == "self" and table.data["tokens"] == 64 and table.data["seq_len"] == SEQ
    for layer in range(3):
        gqa, full = _cell(table, layer, "gqa"), _cell(table, layer, "swa:window=32")
        assert gqa.kl == 0 and gqa.delta_loss == 0 and 0 <= gqa.extra["block_influence"] <= 2
        assert full.kl < 1e-6  # a window covering the whole sequence is the teacher's attention
        for cand in ("swa:window=2", "mla:rank=8", "gdn", "drop"):
            assert _cell(table, layer, cand).kl > 1e-5, (layer, cand)
        assert _cell(table, layer, "drop").kl > 100 * max(full.kl, 1e-8)
        for cand in ("mla:rank=8", "gdn"):
            e = _cell(table, layer, cand)
            assert e.align_steps == 12 and e.extra["align_nmse"] < e.extra["align_nmse_init"], (layer, cand, e.extra)
        assert _cell(table, layer, "swa:window=2").align_steps == 0
    assert not list(out.parent.glob("*.items*.jsonl")) and not out.with_suffix(".library.d").exists()
    # Spearman over 3 layers without ties: 1 - 6 sum(d^2) / (3 (9 - 1)) = 1 - sum(d^2) / 4, d the rank differences
    by_bi = sorted(range(3), key=lambda i: _cell(table, i, "gqa").extra["block_influence"])
    by_drop = sorted(range(3), key=lambda i: _cell(table, i, "drop").kl)
    assert scorer.proxy_agreement(table) == 1 - sum((by_bi.index(i) - by_drop.index(i)) ** 2 for i in range(3)) / 4


def _influence_table(bi, drop):
    """A table of len(bi) layers: the teacher's entry holds block influence bi[i], the `drop` entry KL drop[i]."""
    entries = [e for i, (b, d) in enumerate(zip(bi, drop)) for e in (
        SensitivityEntry(i, Candidate.of("gqa"), 0.0, 0.0, 0, {"block_influence": b}),
        SensitivityEntry(i, Candidate.of("drop"), d, 0.0, 0))]
    return SensitivityTable(Header.new(ModelRef("m", "sha", len(bi))), "kl", {}, tuple(entries))


@pytest.mark.parametrize("bi, drop, expected", [
    ((0.1, 0.2, 0.3), (1.0, 2.0, 3.0), 1.0),  # the proxy ranks the layers as the measurement does
    ((0.1, 0.2, 0.3), (3.0, 2.0, 1.0), -1.0),  # the opposite order
    ((0.1, 0.2, 0.3), (2.0, 1.0, 3.0), 0.5),  # one adjacent swap: 1 - 6 x 2 / 24
    ((0.1, 0.2, 0.3, 0.4), (1.0, 2.0, 4.0, 3.0), 0.8),  # 1 - 6 x 2 / 60
    ((0.1, 0.2), (1.0, 2.0), None),  # fewer than 3 layers: no rank correlation
])
def test_proxy_agreement_is_spearmans_rank_correlation(bi, drop, expected):
    got = scorer.proxy_agreement(_influence_table(bi, drop))
    assert got == (None if expected is None else pytest.approx(expected, abs=1e-12))


def test_library_weights_rebuild_the_scored_module(teacher, reference):
    """Library entries load into surgery.swap(weights=...) and, through the model's own forward, give the scored KL."""
    table, out = reference
    library = library_path(out)
    side = json.loads(library.with_suffix(".json").read_text())
    assert side["kind"] == CandidateLibrary.kind and side["model"]["num_hidden_layers"] == 3
    assert {(e["layer"], e["op"]) for e in side["entries"]} == {(i, op) for i in range(3) for op in ("mla", "gdn")}
    model = load_model(teacher)
    n = ARGS["tokens"] // SEQ
    ids = data.sample_from_teacher(model, n + scorer.ALIGN_WINDOWS, SEQ, ARGS["seed"])[:n]
    with torch.no_grad():
        p = torch.log_softmax(model(ids).logits[:, :-1].float(), -1)
        for layer, cand in ((0, Candidate.of("gdn")), (2, Candidate.parse("mla:rank=8")), (1, Candidate.of("drop"))):
            weights = load_library_entry(library, layer, cand)
            assert (weights is not None) == cand.spec.aligned
            surgery.swap(model, layer, cand, weights=weights)
            q = torch.log_softmax(model(ids, use_cache=False).logits[:, :-1].float(), -1)
            surgery.restore(model, layer)
            kl = float((p.exp() * (p - q)).sum(-1).mean())
            assert kl == pytest.approx(_cell(table, layer, str(cand)).kl, rel=1e-3, abs=1e-7)

    # `mosaic build --library` ships exactly these modules
    layers = (Candidate.of("gdn"), Candidate.of("gqa"), Candidate.parse("mla:rank=8"))
    plan = LayerPlan(header=Header.new(table.header.model), layers=layers, predicted={}, objective=0.0,
                     constraints={}, solver={})
    built = builder.build(save(plan, out.parent / "plan.json"), library=library, out=out.parent / "built")
    from transformers import AutoModelForCausalLM

    shipped = AutoModelForCausalLM.from_pretrained(built, trust_remote_code=True).eval()
    for layer, cand in enumerate(layers):
        surgery.swap(model, layer, cand, weights=load_library_entry(library, layer, cand))
    with torch.no_grad():
        torch.testing.assert_close(shipped(ids).logits, model(ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)


def test_library_sidecar_is_a_schema_record(reference, tmp_path):
    """The sidecar loads as `CandidateLibrary` and saves back to the same JSON; one written by hand with the
    fields older versions wrote (no scores_sha256, no provenance) loads too; another kind is refused by name."""
    table, out = reference
    path = library_path(out).with_suffix(".json")
    side = load_library_sidecar(path)
    assert side.header.model == table.header.model and len(side.scores_sha256) == 64
    assert {(e.layer, e.candidate.op) for e in side.entries} == {(i, op) for i in range(3) for op in ("mla", "gdn")}
    assert all(e.align_steps == 12 and "align_nmse" in e.extra for e in side.entries)
    assert to_json(side) == json.loads(path.read_text())
    old = {"kind": CandidateLibrary.kind, "schema_version": 1, "model": json.loads(path.read_text())["model"],
           "entries": [{"layer": 0, "op": "gdn", "params": {}, "align_steps": 3, "fingerprint": "f" * 16}]}
    (tmp_path / "old.json").write_text(json.dumps(old))
    loaded = load_library_sidecar(tmp_path / "old.json")
    assert loaded.scores_sha256 == "" and loaded.entries[0].candidate == Candidate.of("gdn")
    (tmp_path / "other.json").write_text(json.dumps({**old, "kind": SensitivityTable.kind}))
    with pytest.raises(UsageError, match='kind: expected "mosaic/candidate-library", got "mosaic/sensitivity"'):
        load_library_sidecar(tmp_path / "other.json")


def test_prefix_is_never_recomputed(teacher, tmp_path, monkeypatch):
    """Decoder-layer calls: the teacher pass runs every layer once per batch, a swap at layer i only i..L-1."""
    calls = []
    real = surgery.TextStack.run_layer
    monkeypatch.setattr(surgery.TextStack, "run_layer", lambda self, layer, *a, **k: calls.append(1) or real(
        self, layer, *a, **k))
    table = scorer.score(teacher, ops="gqa,swa:window=4,none", tokens=4 * SEQ, seq_len=SEQ, align_steps=0,
                         out=tmp_path / "s.json")
    L, batches = 3, 1 + -(-scorer.ALIGN_WINDOWS // scorer._rows_per_batch(SEQ, "cpu"))
    assert len(calls) == batches * L + 2 * sum(L - i for i in range(L))
    c = table.data["cost"]
    assert c["ratio"] < 1 and c["done_full_forwards"] == pytest.approx(
        c["teacher_full_forwards"] + c["items_full_forwards"] + c["align_full_forwards"])


def test_work_for_a_36_layer_model_is_at_most_0_6_of_naive():
    from mosaic_search.hf.models import load_config

    dims = surgery.dims_of(load_config("Qwen/Qwen3-VL-4B-Instruct", shipped_ok=True))
    assert dims.num_layers == 36
    c = scorer.cost(dims, default_candidates(dims), scorer.DEFAULT_TOKENS, scorer.DEFAULT_SEQ_LEN,
                    scorer.DEFAULT_ALIGN_STEPS)
    assert c["ratio"] <= 0.6 and c["naive_full_forwards"] >= 36 * 9


def _killed_run(teacher, out, after: int) -> int:
    """Run the CLI in a subprocess that kills itself with SIGKILL right after its `after`-th finished item."""
    code = textwrap.dedent(f"""
        import os, signal, sys
        from mosaic_search.quality import library
        from mosaic_search.cli import main
        real, n = library.append_item, [0]
        def append(path, row):
            real(path, row)
            n[0] += 1
            if n[0] == {after}:
                os.kill(os.getpid(), signal.SIGKILL)
        library.append_item = append
        sys.exit(main({CLI_ARGS + ["--teacher", teacher, "--out", str(out)]!r}))
    """)
    return subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True).returncode


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(teacher, reference, tmp_path):
    out = tmp_path / "s.json"
    assert _killed_run(teacher, out, after=5) == -9
    log = out.with_suffix(".items.jsonl")
    assert len(log.read_text().splitlines()) == 5 and not out.exists()
    with log.open("a") as f:
        f.write('{"layer": 2, "op": "gd')  # a line cut short by the kill
    saved = log.read_bytes()
    bad = main(["score", "--teacher", teacher, "--out", str(out), "--resume", "--tokens", "0"])
    assert bad == 2 and log.read_bytes() == saved  # bad input loses nothing
    seen = []
    table = scorer.score(teacher, out=out, resume=True, progress=lambda done, total, what: seen.append(total), **ARGS)
    assert seen[-1] == 15 - 5  # only the unfinished items ran
    assert _rows(table) == _rows(reference[0])
    seen.clear()
    stale = scorer.score(teacher, out=out, resume=True, progress=lambda done, total, what: seen.append(total),
                         **{**ARGS, "align_steps": 3})
    assert seen[-1] == 6  # changed alignment: only the aligned items (2 per layer) are stale
    assert _rows(stale)[:3] == _rows(reference[0])[:3] and _cell(stale, 0, "gdn").align_steps == 3


@pytest.mark.slow
def test_two_torchrun_ranks_equal_one_process(teacher, reference, tmp_path):
    torchrun = shutil.which("torchrun") or str(Path(sys.executable).with_name("torchrun"))
    if not Path(torchrun).exists():
        pytest.skip("torchrun is not installed")
    out = tmp_path / "s.json"
    # --standalone: a free rendezvous port, so concurrent runs on one machine do not collide
    r = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", "-m", "mosaic_search", *CLI_ARGS,
                        "--teacher", teacher, "--out", str(out), "--json"], env=ENV, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads(r.stdout)["path"] == str(out)  # rank 0 alone printed
    assert _rows(load_sensitivity(out)) == _rows(reference[0])
    assert library_path(out).read_bytes() == library_path(reference[1]).read_bytes()


def test_text_and_chat_files_are_tokenized_by_the_teacher(teacher, tmp_path, capsys):
    words = " ".join(f"w{(7 * i) % 90 + 3}" for i in range(300))
    txt = tmp_path / "a.txt"
    txt.write_text(words)
    assert main(["score", "--teacher", teacher, "--data", str(txt), "--ops", "gqa,drop", "--tokens", "64",
                 "--seq-len", str(SEQ), "--out", str(tmp_path / "t.json")]) == 0
    shown = capsys.readouterr().out
    assert "drop" in shown and "full-forward" in shown and f"wrote {tmp_path / 't.json'}" in shown
    table = load_sensitivity(tmp_path / "t.json")
    assert table.data["source"] == str(txt) and table.data["tokens"] == 64 and "align_data" not in table.data
    assert table.header.inputs["data"] == sha256_file(txt)
    chat = tmp_path / "c.jsonl"
    chat.write_text("\n".join(json.dumps({"messages": [{"role": "user", "content": words[:200]},
                                                       {"role": "assistant", "content": [{"type": "text",
                                                                                          "text": words[:90]}]}]})
                              for _ in range(2)) + "\n" + json.dumps({"text": words[:120]}) + "\n")
    table = scorer.score(teacher, data=str(chat), ops="drop", tokens=4096, seq_len=SEQ, out=tmp_path / "c.json")
    assert 0 < table.data["tokens"] < 4096 and table.data["tokens"] % SEQ == 0 and _cell(table, 0, "drop").kl > 0
    assert "shared" in table.data["align_data"]  # the file is too short for separate alignment windows


def test_parquet_rows(teacher, tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table({"text": [" ".join(f"w{i % 90 + 3}" for i in range(k, k + 80)) for k in range(3)]}),
                   tmp_path / "d.parquet")
    table = scorer.score(teacher, data=str(tmp_path / "d.parquet"), ops="drop", tokens=64, seq_len=SEQ,
                         out=tmp_path / "p.json")
    assert table.data["tokens"] == 64 and _cell(table, 2, "drop").kl > 0


def test_vlm_teacher_scores_text(tmp_path):
    path = tmp_path / "vl"
    tiny_model("qwen3_vl").save_pretrained(path)
    table = scorer.score(str(path), ops="gqa,swa:window=16,drop", tokens=32, seq_len=16, out=tmp_path / "v.json")
    assert _cell(table, 0, "swa:window=16").kl < 1e-6 < _cell(table, 0, "drop").kl


@pytest.fixture
def bare_teacher(tmp_path) -> str:
    path = tmp_path / "bare"
    tiny_model("qwen3").save_pretrained(path)
    return str(path)


def _bad_inputs(tmp_path, teacher, bare):
    empty, image_rows, junk = tmp_path / "empty.txt", tmp_path / "img.jsonl", tmp_path / "junk.png"
    empty.write_text("")
    junk.write_bytes(b"not an image")
    image_rows.write_text(json.dumps({"messages": [{"role": "user", "content": [
        {"type": "image", "image": str(junk)}, {"type": "text", "text": "w5 w6"}]}]}) + "\n")
    (tmp_path / "a.txt").write_text("w5 w6 w7 " * 40)
    return {
        "missing file": (["--teacher", teacher, "--data", str(tmp_path / "nope.txt")], "no such file"),
        "empty file": (["--teacher", teacher, "--data", str(empty)], "empty"),
        # refused before its image is read (test_scorer_vlm.py: unreadable images for a VLM teacher)
        "image rows for a text-only teacher": (["--teacher", teacher, "--data", str(image_rows)], "reads text only"),
        "no tokenizer": (["--teacher", bare, "--data", str(tmp_path / "a.txt")], "no tokenizer"),
        "unresolvable teacher": (["--teacher", "no-such-org/no-such-model"], "pass a local model directory"),
        "zero tokens": (["--teacher", teacher, "--tokens", "0"], "--tokens"),
        "unknown op": (["--teacher", teacher, "--ops", "gqa,gdm"], 'did you mean "gdn"'),
    }


def test_bad_input_is_one_line_exit_2_and_writes_nothing(teacher, bare_teacher, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out" / "s.json"
    for name, (args, words) in _bad_inputs(tmp_path, teacher, bare_teacher).items():
        code = main(["score", *args, "--out", str(out)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and words in err[0], (name, err)
        assert not out.parent.exists(), name


def test_default_windows_are_longer_than_every_scored_window():
    """A window as long as the calibration sequence is full attention there and would score 0."""
    from mosaic_search.hf import surgery
    from mosaic_search.hf.models import load_config
    from mosaic_search.operators import parse_candidates

    dims = surgery.dims_of(load_config("tiny"))
    assert scorer.default_seq_len(parse_candidates("gqa,gdn", dims), dims) == scorer.DEFAULT_SEQ_LEN
    assert scorer.default_seq_len(parse_candidates("swa:window=128,swa:window=512", dims), dims) == 1024
    assert scorer.default_seq_len(parse_candidates("swa:window=4096", dims), dims) == dims.max_position
    with pytest.raises(UsageError, match="swa:window=8192: window must be at most 4096 for this model"):
        parse_candidates("swa:window=8192", dims)  # longer than the model's positions: full attention, mislabelled
