"""Stage 5 and measured quality: `mosaic distill` and `mosaic eval` on builds of the embedded teacher."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mosaic_search import builder
from mosaic_search.artifacts.distill_record import load_distill_record
from mosaic_search.artifacts.plan import PLAN_FILE
from mosaic_search.cli import main
from mosaic_search.hf.models import load_model
from mosaic_search.quality.evaluation import EvalSet, eval_set, evaluate, measure
from mosaic_search.recovery import checkpoint
from mosaic_search.recovery import distill as distill_mod

EXAMPLES = Path(__file__).resolve().parents[1] / "layer_plans" / "examples" / "tiny"
QUICK = dict(steps=2, batch_size=2, seq_len=64, quality=False)  # enough to run every code path, in seconds


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    """Two builds of tiny without aligned weights: `swa` (GGNSGGNN: one swa layer to train, attention removed in
    three) and `drop` (GGXGGXXG: the replaced layers have no parameters)."""
    root = tmp_path_factory.mktemp("builds")
    return {name: builder.build(EXAMPLES / plan, library=False, out=root / name)
            for name, plan in (("swa", "plan-tpot-1.25x.json"), ("drop", "plan-tpot-1.5x.json"))}


def _state(path):
    from safetensors.torch import load_file

    return load_file(str(Path(path) / "model.safetensors"))


@pytest.mark.slow
def test_evaluate_the_teacher_against_itself_is_exact():
    r = evaluate("tiny", teacher="tiny", windows=2, seq_len=256)
    assert r["kl"] == 0.0 and r["tokens"] == 2 * 255
    assert r["recall"] == {"<128": 1.0, ">=128": 1.0} and r["eval"]["probes"] == 150
    assert 0.2 < r["heldout_loss"] < 1.5  # nats per byte: the model card's held-out loss is 1.13 on 512-byte windows


def test_evaluate_reads_the_plans_teacher_and_sees_the_swaps(builds, tmp_path, capsys):
    r = evaluate(str(builds["drop"]), windows=1, seq_len=256)
    assert r["teacher"] == "tiny" and r["kl"] > 0.05
    for command in ("eval", "distill"):
        assert main([command, str(tmp_path / "nothing")]) == 2
        assert "no such model directory" in capsys.readouterr().err


def test_eval_set_errors_are_one_line_usage_errors(tmp_path):
    from mosaic_search.errors import UsageError

    short = tmp_path / "short.txt"
    short.write_text("x" * 100)
    with pytest.raises(UsageError, match="fewer than the 2048"):
        eval_set("tiny", str(short), windows=2, seq_len=1024)
    bad = tmp_path / "probes.jsonl"
    bad.write_text('{"prompt": "a"}\n')
    with pytest.raises(UsageError, match="line 1"):
        eval_set("tiny", probes=str(bad), windows=1, seq_len=64)
    with pytest.raises(UsageError, match="a folder"):
        eval_set("tiny", probes=str(tmp_path), windows=1, seq_len=64)


@pytest.mark.slow
def test_distill_writes_a_model_that_loads_like_a_build(builds, tmp_path):
    from transformers import AutoModelForCausalLM

    out = distill_mod.distill(str(builds["swa"]), out=tmp_path / "d", trainable="mixers", **QUICK)
    record = load_distill_record(out)
    assert [(r["step"], r["stage"]) for r in record.losses] == [(1, "offpolicy"), (2, "offpolicy"),
                                                                (3, "onpolicy"), (4, "onpolicy")]
    assert all(r["loss"] > 0 for r in record.losses) and record.settings["teacher"] == "tiny"
    assert record.settings["data"]["source"] == "sampled from the teacher" and record.settings["trainable"] == "mixers"
    assert (out / PLAN_FILE).read_bytes() == (builds["swa"] / PLAN_FILE).read_bytes()
    assert not (tmp_path / "d.checkpoint").exists()
    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True).eval()
    assert model.config.mosaic["layers"] == json.loads((builds["swa"] / "config.json").read_text())["mosaic"]["layers"]
    prompt = torch.tensor([[40, 41, 42, 43, 44, 45]])
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
    with torch.no_grad():
        assert model.generate(prompt, **kw).tolist() == model.generate(prompt, use_cache=False, **kw).tolist()
    # --trainable mixers: every layer's attention moved, nothing else did
    before, after = _state(builds["swa"]), _state(out)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(".self_attn." in k for k in moved)
    assert {k.split(".")[2] for k in moved} == {"0", "1", "3", "4", "5"}  # the layers that have attention weights


def test_the_output_keeps_the_builds_dtype_unless_asked(tmp_path):
    """A bfloat16 build distills (in float32) into a bfloat16 directory, as large as the build; `dtype` overrides."""
    from safetensors import safe_open

    build = builder.build(EXAMPLES / "plan-tpot-1.5x.json", library=False, dtype="bfloat16", out=tmp_path / "bf16")
    fast = dict(QUICK, steps=1, stage="offpolicy")
    for out, dtype, want, stored in ((tmp_path / "kept", None, "bfloat16", "BF16"),
                                     (tmp_path / "asked", "float32", "float32", "F32")):
        distill_mod.distill(str(build), out=out, dtype=dtype, **fast)
        with safe_open(str(out / "model.safetensors"), "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {stored}
        assert json.loads((out / "config.json").read_text())["dtype"] == want
        assert load_distill_record(out).settings["dtype"] == want
    assert (tmp_path / "kept" / "model.safetensors").stat().st_size == (build / "model.safetensors").stat().st_size
    with pytest.raises(distill_mod.UsageError, match='^dtype must be one of float32, bfloat16, float16, got "int8"'):
        distill_mod.distill(str(build), out=tmp_path / "bad", dtype="int8", **fast)


def test_trainable_replaced_trains_only_the_swapped_in_mixers(builds, tmp_path):
    out = distill_mod.distill(str(builds["swa"]), out=tmp_path / "d", trainable="replaced", stage="offpolicy",
                              **QUICK)
    before, after = _state(builds["swa"]), _state(out)
    assert {k.split(".")[2] for k in before if not torch.equal(before[k], after[k])} == {"3"}


@pytest.mark.slow
def test_offpolicy_distillation_lowers_kl_on_held_out_text(builds, tmp_path):
    out = distill_mod.distill(str(builds["drop"]), out=tmp_path / "d", stage="offpolicy", steps=12, batch_size=2,
                              seq_len=256, quality=False, trainable="all", lr=3e-4)
    teacher = load_model("tiny")
    evals = eval_set("tiny", windows=2, seq_len=512)
    evals = EvalSet(evals.windows, (), evals.split, evals.source)
    kl = [measure(load_model(str(m)), teacher, evals)["kl"] for m in (builds["drop"], out)]
    assert kl[1] < 0.95 * kl[0], kl  # 0.727 -> 0.636 when written


@pytest.mark.slow
def test_the_record_holds_quality_before_and_after(builds, tmp_path):
    out = distill_mod.distill(str(builds["drop"]), out=tmp_path / "d", stage="offpolicy", steps=1, batch_size=1,
                              seq_len=64, trainable="all")
    q = load_distill_record(out).quality
    for when in ("before", "after"):
        assert set(q[when]) == {"kl", "heldout_loss", "tokens", "recall"} and q[when]["kl"] > 0
    assert q["before"]["kl"] == pytest.approx(evaluate(str(builds["drop"]))["kl"])


@pytest.mark.parametrize("args, message", [
    (["--trainable", "replaced"], "nothing to train"),
    (["--stage", "offpolcy"], 'did you mean "offpolicy"'),
    (["--steps", "0"], "at least one step"),
    (["--steps", "2", "--tokens", "99"], "exclude each other"),
    (["--batch-size", "0"], "--batch-size must be positive"),
    (["--seq-len", "1"], "--seq-len must be at least 2, got 1"),
    (["--oracle-weight", "2"], "--oracle-weight must be in [0, 1], got 2"),
    (["--eval", "--eval-data", "/no/such.txt"], "--eval-data /no/such.txt: no such file"),
])
def test_bad_arguments_exit_2_in_one_line(builds, tmp_path, capsys, args, message):
    code = main(["distill", str(builds["drop"]), "--out", str(tmp_path / "o"), "--no-eval", *args])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1 and message in errors[0], errors
    assert not (tmp_path / "o").exists()


def test_bad_data_and_a_foreign_oracle_fail_before_training(builds, tmp_path, capsys):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["distill", str(builds["drop"]), "--data", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "empty" in capsys.readouterr().err
    other = tmp_path / "other"
    Qwen3ForCausalLM(Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=16)).save_pretrained(other)
    assert main(["distill", str(builds["drop"]), "--oracle", str(other), "--out", str(tmp_path / "o"), "--no-eval",
                 "--steps", "1", "--seq-len", "32"]) == 2
    assert "vocabulary" in capsys.readouterr().err
    assert main(["distill", str(builds["drop"]), "--out", str(builds["swa"])]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_a_model_with_another_tokenizer_is_refused(builds, tmp_path, capsys):
    import shutil

    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    other = tmp_path / "other"
    shutil.copytree(builds["drop"], other)
    for f in other.glob("tokenizer*"):
        f.unlink()
    words = Tokenizer(models.WordLevel({"<unk>": 0, "a": 1}, unk_token="<unk>"))
    PreTrainedTokenizerFast(tokenizer_object=words, unk_token="<unk>").save_pretrained(other)
    assert main(["distill", str(other), "--out", str(tmp_path / "o"), "--no-eval"]) == 2
    assert "its tokenizer maps text to tokens differently from the teacher's" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_an_oracle_of_the_same_vocabulary_joins_the_onpolicy_stage(builds, tmp_path):
    """The on-policy loss mixes the oracle's divergence in: an oracle equal to the teacher changes nothing, another
    model (the `swa` build of the same teacher) changes the loss from the first step (same samples: same seed)."""
    out = distill_mod.distill(str(builds["drop"]), out=tmp_path / "d", oracle="tiny", oracle_weight=0.5,
                              stage="onpolicy", divergence="jsd", **QUICK)
    record = load_distill_record(out)
    assert record.settings["oracle"] == "tiny" and len(record.losses) == 2
    first = {}
    for name, oracle in (("none", None), ("other", str(builds["swa"]))):
        out = distill_mod.distill(str(builds["drop"]), out=tmp_path / name, oracle=oracle, oracle_weight=0.5,
                                  stage="onpolicy", divergence="jsd", **QUICK)
        first[name] = load_distill_record(out).losses[0]["loss"]
    assert record.losses[0]["loss"] == pytest.approx(first["none"], rel=1e-5)
    assert abs(first["other"] - first["none"]) > 1e-3 * first["none"], first


def test_divergence_reverse_runs_and_changes_the_onpolicy_loss(builds, tmp_path, capsys):
    """`--divergence reverse` through the command line: one on-policy step, whose loss differs from the forward
    KL's on the same samples (the same seed) and is recorded under its name."""
    quick = ["--stage", "onpolicy", "--steps", "1", "--batch-size", "2", "--seq-len", "32", "--no-eval"]
    assert main(["distill", str(builds["drop"]), "--out", str(tmp_path / "r"), "--divergence", "reverse",
                 *quick]) == 0, capsys.readouterr().err
    forward = distill_mod.distill(str(builds["drop"]), out=tmp_path / "f", stage="onpolicy", steps=1, batch_size=2,
                                  seq_len=32, quality=False)
    r, f = load_distill_record(tmp_path / "r"), load_distill_record(forward)
    assert (r.settings["divergence"], f.settings["divergence"]) == ("reverse", "forward")
    assert r.losses[0]["loss"] > 0 and abs(r.losses[0]["loss"] - f.losses[0]["loss"]) > 1e-4, (r, f)


def _distill_cmd(model, out, *extra):
    return [sys.executable, "-m", "mosaic_search", "distill", str(model), "--out", str(out), "--no-eval",
            "--stage", "offpolicy", "--batch-size", "2", "--seq-len", "32", "--trainable", "all", *extra]


@pytest.mark.slow
def test_kill_9_then_resume_reaches_the_uninterrupted_weights(builds, tmp_path):
    steps = ["--steps", "80", "--checkpoint-every", "4"]
    whole = subprocess.run(_distill_cmd(builds["drop"], tmp_path / "whole", *steps), capture_output=True, text=True)
    assert whole.returncode == 0, whole.stderr
    out = tmp_path / "cut"
    proc = subprocess.Popen(_distill_cmd(builds["drop"], out, *steps), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = out.with_name("cut.checkpoint") / "state.json"
    deadline = time.monotonic() + 120
    while not state.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert state.is_file() and not out.exists(), "the run must be killed between its first checkpoint and its end"
    killed_at = json.loads(state.read_text())["step"]
    assert 0 < killed_at < 80
    resumed = subprocess.run(_distill_cmd(builds["drop"], out, *steps, "--resume"), capture_output=True, text=True)
    assert resumed.returncode == 0 and "resuming from" in resumed.stderr, resumed.stderr
    a, b = _state(tmp_path / "whole"), _state(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_distill_record(out).losses == load_distill_record(tmp_path / "whole").losses


def test_resume_without_a_checkpoint_says_so_and_starts_at_step_0(builds, tmp_path, capsys):
    out = tmp_path / "o"
    assert main(_distill_cmd(builds["drop"], out, "--steps", "1", "--resume")[3:]) == 0
    assert f"no checkpoint at {out.with_name('o.checkpoint')}; starting from step 0" in capsys.readouterr().err
    assert [r["step"] for r in load_distill_record(out).losses] == [1]


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_other_settings(builds, tmp_path, capsys):
    out = tmp_path / "o"
    ckpt = out.with_name("o.checkpoint")
    checkpoint.save(ckpt, {"other": 1}, 1, [], [], torch.optim.SGD([torch.zeros(1)], lr=1))
    assert main(_distill_cmd(builds["drop"], out, "--steps", "2", "--resume")[3:]) == 4
    assert "other settings" in capsys.readouterr().err
    checkpoint.save(ckpt, {"lr": 0.5}, 1, [], [], torch.optim.SGD([torch.zeros(1)], lr=1))
    assert main(_distill_cmd(builds["drop"], out, "--steps", "2", "--resume")[3:]) == 4
    assert "made with other lr (0.5 there, 0.0003 now);" in capsys.readouterr().err  # names what differs


@pytest.fixture(scope="module")
def one_process(builds, tmp_path_factory):
    """3 steps of a global batch of 4 in one process, checkpointing every step, on the build with `none` layers
    (whose unused norms DDP must expect)."""
    out = tmp_path_factory.mktemp("one") / "one"
    one = subprocess.run(_distill_cmd(builds["swa"], out, *TORCHRUN_ARGS), capture_output=True, text=True)
    assert one.returncode == 0, one.stderr
    return out


TORCHRUN_ARGS = ["--steps", "3", "--batch-size", "4", "--checkpoint-every", "1"]


@pytest.mark.slow
@pytest.mark.parametrize("parallel, port", [("ddp", 29533), ("fsdp", 29534)])
def test_torchrun_two_processes_follow_one_process(builds, one_process, tmp_path, parallel, port):
    """DDP or FSDP2 over 2 CPU processes (gloo), the global batch split in two: the same loss curve and final weights
    as one process (checkpoints written on the way: FSDP2 gathers its shards for them)."""
    cmd = _distill_cmd(builds["swa"], tmp_path / "two", *TORCHRUN_ARGS, "--parallel", parallel)
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                          "--master_port", str(port), *cmd[1:]], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert two.returncode == 0, two.stderr[-2000:]
    a = [r["loss"] for r in load_distill_record(one_process).losses]
    b = [r["loss"] for r in load_distill_record(tmp_path / "two").losses]
    assert b == pytest.approx(a, rel=1e-3)  # summation order differs; 1.4e-4 seen
    record = load_distill_record(tmp_path / "two")
    assert record.settings["world_size"] == 2 and record.settings["parallel"] == parallel
    x, y = _state(one_process), _state(tmp_path / "two")
    assert x.keys() == y.keys()
    # Adam gives every element a step of about lr whatever its gradient's size: where a gradient is ~0, the other
    # summation order can flip that step's sign (0.02% of elements seen), so most, not all, agree closely
    close = sum(int(((x[k] - y[k]).abs() < 1e-5).sum()) for k in x) / sum(x[k].numel() for k in x)
    assert close > 0.999


def test_trainable_replaced_takes_a_narrowed_mlp_but_not_the_teachers_mixer_beside_it(tmp_path):
    """A layer that changed its MLP alone trains that MLP, not the teacher's attention it kept; a layer whose mixer
    changed trains the mixer (and its MLP when narrowed too)."""
    from mosaic_search.artifacts.header import save
    from mosaic_search.artifacts.plan import load_plan
    from mosaic_search.hf.models import load_model
    from mosaic_search.operators import Candidate
    from mosaic_search.recovery.loading import trainable

    plan = load_plan(EXAMPLES / "plan-tpot-1.25x.json")
    layers = list(plan.layers)
    layers[1] = Candidate.parse("gqa+mlp:width=96")  # the teacher's mixer, a narrower MLP
    layers[3] = Candidate.parse("swa:window=128+mlp:width=96")
    path = save(dataclasses.replace(plan, layers=tuple(layers)), tmp_path / "plan.json")
    student = load_model(str(builder.build(path, library=False, out=tmp_path / "b")))
    names = {n for n, _ in trainable(student, load_model("tiny"), "replaced")}
    by_layer = {(n.split(".")[2], n.split(".")[3]) for n in names}
    assert ("1", "mlp") in by_layer and ("1", "self_attn") not in by_layer
    assert {("3", "mlp"), ("3", "self_attn")} <= by_layer
