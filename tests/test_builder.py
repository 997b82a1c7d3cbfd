"""`mosaic build`: the model directory of a plan, loaded with torch + transformers only."""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import ARCHS, every_operator, tiny_config

from mosaic_search import builder
from mosaic_search.artifacts.distill_record import load_distill_record
from mosaic_search.artifacts.header import Header, ModelRef, save, sha256_file, to_json
from mosaic_search.artifacts.library import CandidateLibrary
from mosaic_search.artifacts.plan import LayerPlan, load_plan
from mosaic_search.artifacts.profile import LatencyProfile, ProfileEntry, Workload
from mosaic_search.artifacts.sensitivity import SensitivityEntry, SensitivityTable
from mosaic_search.errors import InfeasibleError, StaleInputError, UsageError
from mosaic_search.hf import surgery
from mosaic_search.hf.models import load_config, load_model, model_from_config, model_ref
from mosaic_search.operators import REGISTRY, Candidate, pattern_string
from mosaic_search.quality.library import find_library, library_key, load_library_entry

WINDOW = 4
LAYERS = len(every_operator(window=WINDOW))  # one layer per operator (and per optional param, every_operator)
PROMPT, NEW = 6, 10  # decoding runs well past the SWA window
IMAGE_TOKENS = 4  # a 16x16 image: 4x4 patches of 4 pixels, merged 2x2


def _config(kind: str, layers: int = LAYERS):
    """tiny_config(kind) with `layers` decoder layers."""
    obj = tiny_config(kind).to_dict()
    text = obj["text_config"] if "text_config" in obj else obj
    text["num_hidden_layers"] = layers
    text.pop("layer_types", None)
    return type(tiny_config(kind)).from_dict(obj)


def _tokenizer():
    """A word-level tokenizer over the tiny vocabulary (with Qwen3-VL's vision tokens), built offline."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(90)}
    vocab.update({"<|image_pad|>": 90, "<|video_pad|>": 91, "<|vision_start|>": 92, "<|vision_end|>": 93})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w3"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w3", pad_token="w0", bos_token="w1", eos_token="w2")
    t.chat_template = "{% for m in messages %}{{ m['content'] }} {% endfor %}"
    return t


def _plan(ref, layers, path) -> Path:
    plan = LayerPlan(header=Header.new(ref), layers=tuple(layers), predicted={}, objective=0.0,
                     constraints={}, solver={})
    return save(plan, path)


def _ids(n=PROMPT, seed=0):
    return torch.randint(3, 89, (1, n), generator=torch.Generator().manual_seed(seed))


def _image_inputs():
    """input_ids with one 16x16 image (4 merged tokens) between text, and its patches."""
    gen = torch.Generator().manual_seed(1)
    ids = torch.tensor([[5, 6, 92, *[90] * IMAGE_TOKENS, 93, 7, 8, 9]])
    pixel_values = torch.randn(16, 3 * 2 * 4 * 4, generator=gen)  # 16 patches of C x T x P x P
    return {"input_ids": ids, "pixel_values": pixel_values, "image_grid_thw": torch.tensor([[1, 4, 4]]),
            "mm_token_type_ids": (ids == 90).int()}


def _load_built(path):
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText

    auto = AutoModelForImageTextToText if "vision_config" in json.loads((path / "config.json").read_text()) \
        else AutoModelForCausalLM
    return auto.from_pretrained(path, trust_remote_code=True).eval()


class Teacher:
    """A saved tiny teacher of one architecture, and plans for it."""

    def __init__(self, kind, root: Path):
        self.kind, self.root = kind, root
        self.dir = root / f"teacher-{kind}"
        model_from_config(_config(kind)).save_pretrained(self.dir)
        _tokenizer().save_pretrained(self.dir)
        self.ref = model_ref(str(self.dir), load_config(str(self.dir)))

    def plan(self, layers, name):
        return _plan(self.ref, layers, self.root / f"{self.kind}-{name}.json")

    def swapped(self, layers):
        """The teacher loaded as the builder loads it, with the plan swapped in memory."""
        model = load_model(str(self.dir))
        torch.manual_seed(0)  # the build's default seed: the same fresh gates and decays
        for i, c in enumerate(layers):
            surgery.swap(model, i, c)
        return model


# every operator, ordered swa, linear, full: without the remote code's mask hook, transformers' mask code fails here
_ORDER = ("sliding_attention", "linear_attention", "full_attention")
MIXED = sorted(every_operator(window=WINDOW), key=lambda c: _ORDER.index(c.spec.layer_type))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """For each architecture: its teacher, an all-gqa build and a build that uses every operator."""
    root = tmp_path_factory.mktemp("build")
    out = {}
    for kind in ARCHS:
        t = Teacher(kind, root)
        gqa = builder.build(t.plan([Candidate.of("gqa")] * LAYERS, "gqa"), out=root / f"{kind}-gqa")
        mixed = builder.build(t.plan(MIXED, "mixed"), out=root / f"{kind}-mixed", max_shard_size="200KB")
        out[kind] = (t, gqa, mixed)
    return out


# ---- what the directory holds ---------------------------------------------------------------------

def test_directory_layout_and_config(built):
    t, _, path = built["qwen3"]
    names = set(os.listdir(path))
    assert {"config.json", "generation_config.json", "mosaic_plan.json", "model.safetensors.index.json",
            "configuration_mosaic.py", "modeling_mosaic.py", "attention.py", "linear_attention.py", "removal.py",
            "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"} <= names
    shards = sorted(n for n in names if n.endswith(".safetensors"))
    assert len(shards) > 1 and not any(n.endswith((".bin", ".pt", ".pth")) for n in names)
    index = json.loads((path / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(shards)
    assert not [n for n in os.listdir(path.parent) if n.startswith(".")], "a temporary directory was left behind"
    plain = path.parent / "plain"
    plain.mkdir()
    assert path.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777  # not mkdtemp's private 0700
    plain.rmdir()

    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "mosaic_qwen3" and cfg["architectures"] == ["MosaicQwen3ForCausalLM"]
    assert cfg["auto_map"] == {"AutoConfig": "configuration_mosaic.MosaicQwen3Config",
                               "AutoModelForCausalLM": "modeling_mosaic.MosaicQwen3ForCausalLM"}
    assert cfg["layer_types"] == [c.spec.layer_type for c in MIXED]
    assert cfg["sliding_window"] == WINDOW
    block = cfg["mosaic"]
    assert [(e["op"], e["params"]) for e in block["layers"]] == [(c.op, c.kwargs) for c in MIXED]
    assert [e for e in block["layers"]] == [c.to_json() for c in MIXED]  # only op and params: no class paths
    assert block["base_model_type"] == "qwen3" and block["mosaic_version"]
    plan_file = t.root / "qwen3-mixed.json"
    assert (path / "mosaic_plan.json").read_bytes() == plan_file.read_bytes()
    assert block["plan_sha256"] == sha256_file(plan_file)
    assert (path / "tokenizer.json").read_bytes() == (t.dir / "tokenizer.json").read_bytes()


def test_vl_config_keeps_vision_and_puts_layer_types_in_text_config(built):
    _, _, path = built["qwen3_vl"]
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["model_type"] == "mosaic_qwen3_vl"
    assert cfg["auto_map"]["AutoModelForImageTextToText"] == "modeling_mosaic.MosaicQwen3VLForConditionalGeneration"
    assert cfg["text_config"]["layer_types"] == [c.spec.layer_type for c in MIXED]
    assert cfg["vision_config"]["depth"] == 2


def test_remote_code_imports_every_mixer_file():
    # transformers copies only statically imported sibling files into its module cache
    from transformers.dynamic_module_utils import get_relative_import_files

    from mosaic_search.modeling.mixers import MIXERS

    modeling = Path(builder.__file__).parent / "modeling"
    copied = {Path(f).stem for f in get_relative_import_files(str(modeling / "modeling_mosaic.py"))}
    assert {MIXERS[op].__module__.rsplit(".", 1)[-1] for op, spec in REGISTRY.items() if spec.axis == "mixer"} | {
        "mlps"} <= copied


# ---- parity ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ARCHS)
def test_all_gqa_build_equals_teacher(built, kind):
    t, gqa, _ = built[kind]
    teacher, model = load_model(str(t.dir)), _load_built(gqa)
    assert type(model).__name__.startswith("Mosaic")
    assert type(surgery.decoder_layers(model)[0].self_attn).__name__ == "Attention"
    ids = _ids(12)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, teacher(ids).logits, rtol=1e-5, atol=1e-5)


# what configs said per layer before the remote code's {op: mixer class} table (mosaic_search.modeling.mixers)
_CLASS_PATHS = {"gqa": "attention:Attention", "swa": "attention:Attention", "mla": "attention:LatentAttention",
                "gdn": "linear_attention:GatedDeltaNet", "kda": "linear_attention:KimiDeltaAttention",
                "none": "removal:NoAttention", "drop": "removal:SkipLayer"}


def test_a_model_built_with_class_paths_in_its_config_still_loads(built, tmp_path):
    """Built configs used to name each layer's class ("mixer": "file:Class") and what it replaced; such a config
    loads through today's remote code (which reads only op and params) to the same model."""
    import shutil

    _, _, path = built["qwen3"]
    old = tmp_path / "old-build"
    shutil.copytree(path, old)
    cfg = json.loads((old / "config.json").read_text())
    for entry in cfg["mosaic"]["layers"]:
        entry.update(mixer=_CLASS_PATHS[entry["op"]], replaces="layer" if entry["op"] == "drop" else "attention")
    (old / "config.json").write_text(json.dumps(cfg, indent=2))
    model, ours = _load_built(old), _load_built(path)
    assert [op for _, op, _ in model.mosaic_mixers()] == [c.op for c in MIXED]
    assert type(surgery.decoder_layers(model)[MIXED.index(Candidate.of("drop"))]).__mro__[1].__name__ == "SkipLayer"
    with torch.no_grad():
        torch.testing.assert_close(model(_ids(12)).logits, ours(_ids(12)).logits, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ARCHS)
def test_mixed_build_equals_swapped_teacher(built, kind):
    t, _, mixed = built[kind]
    swapped, model = t.swapped(MIXED), _load_built(mixed)
    layers = surgery.decoder_layers(model)
    assert type(layers[MIXED.index(Candidate.of("drop"))]).__mro__[1].__name__ == "SkipLayer"  # as a teacher layer
    ids = _ids(12)
    with torch.no_grad():
        # the swapped teacher keeps its own config (every layer full attention), so its forward runs without a cache
        torch.testing.assert_close(model(ids).logits, swapped(ids, use_cache=False).logits, rtol=1e-5, atol=1e-5)
        if kind == "qwen3_vl":  # image + text: vision tower, mRoPE and DeepStack as the teacher's
            inputs = _image_inputs()
            torch.testing.assert_close(model(**inputs).logits, swapped(**inputs, use_cache=False).logits,
                                       rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", ARCHS)
def test_generate_with_either_cache_equals_without(built, kind):
    _, _, mixed = built[kind]
    model = _load_built(mixed)
    kwargs = dict(max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        uncached = model.generate(_ids(), use_cache=False, **kwargs)
        assert uncached.shape[1] == PROMPT + NEW > 2 * WINDOW
        for cache in ("static", "dynamic"):  # static is the built model's default
            assert torch.equal(model.generate(_ids(), cache_implementation=cache, **kwargs), uncached)
        if kind == "qwen3_vl":
            inputs = _image_inputs()
            uncached = model.generate(**inputs, use_cache=False, **kwargs)
            for cache in ("static", "dynamic"):
                assert torch.equal(model.generate(**inputs, cache_implementation=cache, **kwargs), uncached)


def test_one_cache_holds_what_each_operator_needs(built):
    from transformers import DynamicCache

    _, _, mixed = built["llama"]
    model = _load_built(mixed)
    ids = _ids(PROMPT + NEW)
    cache = DynamicCache(config=model.config)
    with torch.no_grad():
        model(ids[:, :PROMPT], cache=cache, use_cache=True)
        for i in range(PROMPT, ids.shape[1]):
            model(ids[:, i:i + 1], cache=cache, use_cache=True)
    total = ids.shape[1]
    assert cache.get_seq_length() == total
    for idx, c in enumerate(MIXED):
        slot = cache.layers[idx]
        keys = getattr(slot, "keys", None)
        if c.op == "gqa":  # its own KV heads: the teacher's 2, or fewer
            assert keys.shape[-2] == total and keys.shape[1] == c.kwargs.get("kv_heads", 2)
        elif c.op == "swa":
            assert keys.shape[-2] < WINDOW  # the window's past; the new token completes it
        elif c.op == "mla":
            assert keys.shape[-2] == total and keys.shape[-1] == c.kwargs["rank"]  # the latent, not K/V
        elif c.op in ("gdn", "kda"):  # a fixed state per head, and the short convolution's last inputs
            assert slot.recurrent_states[0].shape[-2:] == (16, 16) and not isinstance(keys, torch.Tensor)
            assert slot.conv_states[0].shape[-1] == 3
        else:  # nothing kept: a zero-channel conv state, so assisted decoding can crop the slot
            assert slot.conv_states[0].numel() == 0 and slot.recurrent_states[0] is None
            assert not isinstance(keys, torch.Tensor)


FRESH = textwrap.dedent("""
    import json, sys


    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "mosaic_search":
                raise ImportError("mosaic_search must not be needed")


    sys.meta_path.insert(0, Block())
    import torch
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoTokenizer

    out = {}
    for kind, path in json.loads(sys.argv[1]).items():
        vl = kind == "qwen3_vl"
        auto = AutoModelForImageTextToText if vl else AutoModelForCausalLM
        model = auto.from_pretrained(path, trust_remote_code=True).eval()
        tok = AutoTokenizer.from_pretrained(path)
        prompt = tok.apply_chat_template([{"role": "user", "content": "w5 w6 w7 w8"}], tokenize=False)
        ids = tok(prompt, return_tensors="pt").input_ids
        new = dict(max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        with torch.no_grad():
            out[kind + "/ids"] = ids
            out[kind + "/logits"] = model(ids).logits
            out[kind + "/generated"] = model.generate(ids, **new)
            if vl:
                gen = torch.Generator().manual_seed(1)
                image_ids = torch.tensor([[5, 6, 92, 90, 90, 90, 90, 93, 7, 8, 9]])
                image = dict(input_ids=image_ids, pixel_values=torch.randn(16, 96, generator=gen),
                             image_grid_thw=torch.tensor([[1, 4, 4]]), mm_token_type_ids=(image_ids == 90).int())
                out[kind + "/image_logits"] = model(**image).logits
                out[kind + "/image_generated"] = model.generate(**image, **new)
    assert not [m for m in sys.modules if m.startswith("mosaic_search")]
    save_file({k: v.contiguous() for k, v in out.items()}, sys.argv[2])
""")


def test_tokenizer_loads_with_the_standard_classes_and_never_prompts(built, monkeypatch):
    from transformers import AutoTokenizer

    t, _, path = built["qwen3"]
    monkeypatch.setattr("builtins.input", lambda *a: pytest.fail("asked on the terminal"))
    want = AutoTokenizer.from_pretrained(t.dir)("w5 w6 w7").input_ids
    for trust in (True, False):  # False: the files alone, without running the model's remote code
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust)
        assert type(tok).__module__.startswith("transformers.") and tok("w5 w6 w7").input_ids == want


@pytest.mark.slow
def test_loads_in_a_fresh_process_without_mosaic(built, tmp_path):
    from safetensors.torch import load_file

    dirs = {kind: str(built[kind][2]) for kind in ARCHS}
    script = tmp_path / "load.py"
    script.write_text(FRESH)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    r = subprocess.run([sys.executable, "-I", str(script), json.dumps(dirs), str(tmp_path / "out.safetensors")],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = load_file(tmp_path / "out.safetensors")
    for kind in ARCHS:
        model = _load_built(built[kind][2])
        ids = got[kind + "/ids"]
        assert ids.tolist() == [[5, 6, 7, 8]]  # the teacher's tokenizer and chat template were used
        with torch.no_grad():
            torch.testing.assert_close(got[kind + "/logits"], model(ids).logits, rtol=0, atol=1e-6)
            expected = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, pad_token_id=0)
        assert got[kind + "/generated"].shape[1] == ids.shape[1] + 6
        assert torch.equal(got[kind + "/generated"], expected)
    assert got["qwen3_vl/image_generated"].shape[1] == 11 + 6
    with torch.no_grad():
        vl = _load_built(built["qwen3_vl"][2])
        torch.testing.assert_close(got["qwen3_vl/image_logits"], vl(**_image_inputs()).logits, rtol=0, atol=1e-6)


def test_tiny_alias_with_tied_embeddings_builds_and_loads(tmp_path, capsys):
    teacher = load_model("tiny")
    assert teacher.config.tie_word_embeddings
    n = teacher.config.num_hidden_layers
    layers = [Candidate.of("gqa"), Candidate.of("swa", {"window": 8})] + [Candidate.of("gdn")] * (n - 2)
    plan = _plan(model_ref("tiny", teacher.config), layers, tmp_path / "plan.json")
    out = builder.build(plan, out=tmp_path / "tiny-built", dtype="bfloat16")
    assert "gdn" in capsys.readouterr().err  # warned: teacher initialisation, no library
    model = _load_built(out)
    assert model.dtype == torch.bfloat16
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    swapped = load_model("tiny", dtype="bfloat16")
    torch.manual_seed(0)
    for i, c in enumerate(layers):
        surgery.swap(swapped, i, c)
    ids = _ids(10)
    with torch.no_grad():
        assert torch.equal(model(ids).logits, swapped(ids, use_cache=False).logits)
    # the embedded teacher's byte-level tokenizer ships with the built model
    from transformers import AutoTokenizer

    from mosaic_search.assets import TINY_DIR

    assert (out / "tokenizer.json").read_bytes() == (TINY_DIR / "tokenizer.json").read_bytes()
    tok = AutoTokenizer.from_pretrained(out)
    assert tok.decode(tok("def f(x): return x")["input_ids"]) == "def f(x): return x"


# ---- candidate library ----------------------------------------------------------------------------

def test_library_weights_replace_teacher_initialisation(built, tmp_path):
    from safetensors.torch import save_file

    t = built["qwen3"][0]
    layers = [Candidate.of("gqa"), Candidate.of("mla", {"rank": 24})] + [Candidate.of("gqa")] * (LAYERS - 2)
    plan = t.plan(layers, "lib")
    mla = t.swapped(layers).model.layers[1].self_attn
    aligned = {k: v + 0.5 for k, v in mla.state_dict().items()}
    lib = tmp_path / "library.safetensors"
    save_file({library_key(1, layers[1], k): v.contiguous() for k, v in aligned.items()}, lib)
    entry = load_library_entry(lib, 1, layers[1])
    assert set(entry) == set(aligned) and load_library_entry(lib, 2, layers[1]) is None

    model = _load_built(builder.build(plan, library=lib, out=tmp_path / "with-lib"))
    got = model.model.layers[1].self_attn.state_dict()
    assert all(torch.equal(got[k], v) for k, v in aligned.items())

    sidecar = {"kind": CandidateLibrary.kind, "schema_version": 1,
               "model": {"id": "other", "config_sha256": "0" * 64, "num_hidden_layers": LAYERS}, "entries": []}
    lib.with_suffix(".json").write_text(json.dumps(sidecar))
    with pytest.raises(StaleInputError, match="library"):
        builder.build(plan, library=lib, out=tmp_path / "stale-lib")
    assert not (tmp_path / "stale-lib").exists()


def test_build_takes_the_library_written_with_the_plans_scores(built, tmp_path, capsys):
    from safetensors.torch import save_file

    t = built["qwen3"][0]
    layers = [Candidate.of("gqa"), Candidate.of("mla", {"rank": 24})] + [Candidate.of("gqa")] * (LAYERS - 2)
    mla = t.swapped(layers).model.layers[1].self_attn
    aligned = {k: v + 0.5 for k, v in mla.state_dict().items()}
    folder = tmp_path / "plans"
    plan = LayerPlan(header=Header.new(t.ref, inputs={"scores": "a" * 64}), layers=tuple(layers),
                     predicted={}, objective=0.0, constraints={}, solver={})
    plan_file = save(plan, folder / "plan.json")
    lib = folder / "sensitivity.library.safetensors"
    save_file({library_key(1, layers[1], k): v.contiguous() for k, v in aligned.items()}, lib)
    sidecar = {"kind": CandidateLibrary.kind, "schema_version": 1, "scores_sha256": "b" * 64, "entries": [],
               "model": {"id": t.ref.id, "config_sha256": t.ref.config_sha256, "num_hidden_layers": LAYERS}}
    lib.with_suffix(".json").write_text(json.dumps(sidecar))  # another table's library: not taken
    assert find_library(plan, plan_file) is None
    builder.build(plan_file, library=lib, out=tmp_path / "other")  # named explicitly: taken, with a warning
    assert "another sensitivity table" in capsys.readouterr().err
    lib.with_suffix(".json").write_text(json.dumps({**sidecar, "scores_sha256": "a" * 64}))
    assert find_library(plan, plan_file) == lib.resolve()

    model = _load_built(builder.build(plan_file, out=tmp_path / "found"))
    assert all(torch.equal(model.model.layers[1].self_attn.state_dict()[k], v) for k, v in aligned.items())
    assert "using" in capsys.readouterr().err
    model = _load_built(builder.build(plan_file, library=False, out=tmp_path / "none"))
    assert not torch.equal(model.model.layers[1].self_attn.state_dict()["o_proj.weight"], aligned["o_proj.weight"])
    assert "no candidate library" in capsys.readouterr().err


def test_library_missing_an_aligned_layer_is_one_line_error(built, tmp_path):
    from safetensors.torch import save_file

    t = built["qwen3"][0]
    plan = t.plan([Candidate.of("gdn")] * (LAYERS - 1) + [Candidate.of("gqa")], "gdn")
    lib = tmp_path / "library.safetensors"
    save_file({"layer0/gqa/q_proj.weight": torch.zeros(1)}, lib)
    with pytest.raises(UsageError, match=r"no aligned weights for layer 0 gdn, layer 1 gdn") as e:
        builder.build(plan, library=lib, out=tmp_path / "out")
    assert "\n" not in str(e.value) and not (tmp_path / "out").exists()
    with pytest.raises(UsageError, match="no such candidate library"):
        builder.build(plan, library=tmp_path / "nope.safetensors", out=tmp_path / "out")
    from mosaic_search.quality.library import load_library_entry

    sidecar = tmp_path / "library.json"  # the JSON beside a library, given in its place
    sidecar.write_text("{}")
    with pytest.raises(UsageError, match=f"library.json: a JSON file, not a safetensors candidate library; the "
                                         f"library is {lib}$"):
        load_library_entry(sidecar, 0, Candidate.of("gqa"))
    lone = tmp_path / "lone.library.json"
    lone.write_text("{}")
    with pytest.raises(UsageError, match="lone.library.json: a JSON file, not a safetensors candidate library$"):
        load_library_entry(lone, 0, Candidate.of("gqa"))
    # a path that is no file is refused as such, not by a file its name's stem happens to share
    (tmp_path / "table.json").write_text("{}")
    with pytest.raises(UsageError, match="table.library: no such candidate library"):
        builder.build(plan, library=tmp_path / "table.library", out=tmp_path / "out")


# ---- bad input ------------------------------------------------------------------------------------

def _leftovers(folder: Path):
    return [n for n in os.listdir(folder) if n.startswith(".")]


def test_plan_for_another_teacher_is_stale(built, tmp_path):
    qwen, llama = built["qwen3"][0], built["llama"][0]
    plan = qwen.plan([Candidate.of("gqa")] * LAYERS, "for-qwen")
    with pytest.raises(StaleInputError, match="allow_stale") as e:
        builder.build(plan, teacher=str(llama.dir), out=tmp_path / "x")
    assert e.value.exit_code == 4 and not (tmp_path / "x").exists()
    out = builder.build(plan, teacher=str(llama.dir), out=tmp_path / "x", allow_stale=True)
    assert json.loads((out / "config.json").read_text())["model_type"] == "mosaic_llama"


def test_plan_of_wrong_length_is_refused(built, tmp_path):
    t = built["llama"][0]
    short = ModelRef(id=t.ref.id, config_sha256=t.ref.config_sha256, num_hidden_layers=LAYERS - 1)
    plan = _plan(short, [Candidate.of("gqa")] * (LAYERS - 1), tmp_path / "short.json")
    with pytest.raises(UsageError, match=f"has {LAYERS - 1} layers but .* has {LAYERS}"):
        builder.build(plan, out=tmp_path / "x", allow_stale=True)
    assert os.listdir(tmp_path) == ["short.json"]


def test_built_dir_loads_through_models_but_is_no_teacher(built, tmp_path):
    t, _, mixed = built["qwen3"]
    assert type(load_model(str(mixed))).__name__ == "MosaicQwen3ForCausalLM"
    plan = t.plan([Candidate.of("gqa")] * LAYERS, "gqa")
    with pytest.raises(UsageError, match="already a model built by mosaic"):
        builder.build(plan, teacher=str(mixed), out=tmp_path / "x", allow_stale=True)


def test_plan_without_any_attention_layer_is_refused(built, tmp_path):
    t = built["qwen3"][0]
    plan = t.plan([Candidate.of("gdn"), Candidate.of("none")] + [Candidate.of("drop")] * (LAYERS - 2), "linear")
    with pytest.raises(UsageError, match="at least one attention layer"):
        builder.build(plan, out=tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_every_point_of_a_wide_sweep_builds_loads_and_generates(built, tmp_path):
    """Solve and build agree on what a valid model is: when dropping layers is the fastest and cheapest move,
    the frontier still keeps one attention layer, and each of its plans builds and generates."""
    from mosaic_search.search import solver

    t = built["qwen3"][0]
    cands = [Candidate.of("gqa"), Candidate.of("swa", {"window": WINDOW}), Candidate.of("gdn"), Candidate.of("drop")]
    ms = {"gqa": 10.0, "swa": 6.0, "gdn": 4.0, "drop": 0.01}
    work = Workload("decode_1k", "decode", 1, 1024)
    entries = tuple(ProfileEntry(l, c, work.name, ms[c.op], None, None, "ok", 0)
                    for l in range(LAYERS) for c in cands)
    prof = LatencyProfile(Header.new(t.ref, env={"device": "cpu"}), (work,),
                          {work.name: 1.0 + 10.0 * LAYERS}, {work.name: 1.0}, entries, (cands[0],) * LAYERS)
    sens = SensitivityTable(Header.new(t.ref), "kl", {}, tuple(
        SensitivityEntry(l, c, 0.0 if c.op in ("gqa", "drop") else 0.1, 0.0, 0) for l in range(LAYERS)
        for c in cands))
    res = solver.sweep("1.1:60:0.5", profile=prof, scores=sens, write=False)
    ok = [pt for pt in res.points if pt["feasible"]]
    assert ok and all(sum(op != "X" for op in pt["pattern"]) >= 1 for pt in ok)
    best = (1.0 + 10.0 * LAYERS) / (1.0 + 6.0 + 0.01 * (LAYERS - 1))  # one swa layer, the rest dropped
    assert max(min(v["speedup"] for v in pt["predicted"].values()) for pt in ok) == pytest.approx(best)
    with pytest.raises(InfeasibleError, match=f"decode_1k {best:.3f}x"):
        solver.solve(prof, sens, speedup=best * 1.01, write=False)
    for i, pattern in enumerate(sorted({pt["pattern"] for pt in ok})):
        pt = next(pt for pt in ok if pt["pattern"] == pattern)
        path = builder.build(t.plan([Candidate.parse(c) for c in pt["layers"]], f"sweep{i}"), out=tmp_path / pattern)
        model = _load_built(path)
        assert model.generate(_ids(), max_new_tokens=3, min_new_tokens=3, do_sample=False).shape == (1, PROMPT + 3)


def test_existing_output_needs_overwrite_and_is_replaced_only_when_complete(built, tmp_path, monkeypatch):
    t = built["qwen3"][0]
    plan = t.plan([Candidate.of("gqa")] * LAYERS, "gqa")
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("user data")
    with pytest.raises(UsageError, match="already exists"):
        builder.build(plan, out=out)
    with pytest.raises(UsageError, match="not a mosaic build"):
        builder.build(plan, out=out, overwrite=True)
    (out / "keep.txt").unlink()
    builder.build(plan, out=out, overwrite=True)
    first = (out / "config.json").read_text()

    other = t.plan([Candidate.of("swa", {"window": 2})] + [Candidate.of("gqa")] * (LAYERS - 1), "swa")

    def crash(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(builder, "_copy_teacher_files", crash)
    with pytest.raises(RuntimeError, match="disk full"):
        builder.build(other, out=out, overwrite=True)
    assert (out / "config.json").read_text() == first and not _leftovers(tmp_path)
    monkeypatch.undo()
    builder.build(other, out=out, overwrite=True)
    assert json.loads((out / "config.json").read_text())["sliding_window"] == 2
    assert not _leftovers(tmp_path)


def test_default_output_path_and_bad_dtype(built, tmp_path, monkeypatch):
    t = built["qwen3"][0]
    plan = t.plan(MIXED, "mixed")
    with pytest.raises(UsageError, match='^dtype must be one of float32, bfloat16, float16, got "float8"'):
        builder.build(plan, dtype="float8")
    monkeypatch.chdir(tmp_path)
    out = builder.build(plan)
    # the letters do not say MIXED's window, rank, KV heads and MLP width: a digest of the layers follows them
    assert re.fullmatch(rf"teacher-qwen3-{pattern_string(MIXED)}-[0-9a-f]{{8}}", out.name)
    assert out.parent == Path("build")
    assert (tmp_path / out / "config.json").is_file()
    loaded = load_plan(plan)
    again = builder.build(loaded, out=tmp_path / "from-object")  # a LayerPlan object, not a file
    written = json.loads((again / "mosaic_plan.json").read_text())
    assert written == to_json(loaded)


def test_padded_batches_are_refused(built):
    model = _load_built(built["qwen3"][2])
    ids = _ids(8).repeat(2, 1)
    mask = torch.ones_like(ids)
    mask[1, :2] = 0
    with pytest.raises(ValueError, match="padded"):
        model(ids, attention_mask=mask)


# ---- CLI ------------------------------------------------------------------------------------------

def test_cli_forwards_to_build(monkeypatch, tmp_path):
    from mosaic_search.cli import main

    seen = {}

    def fake(plan, **kwargs):
        seen.update(plan=plan, **kwargs)
        return tmp_path / "built"

    monkeypatch.setattr(builder, "build", fake)
    assert main(["build", "p.json", "--teacher", "T", "--library", "lib.safetensors", "--out", "o", "--dtype",
                 "bfloat16", "--overwrite", "--allow-stale"]) == 0
    assert seen == {"plan": "p.json", "teacher": "T", "library": "lib.safetensors", "out": "o", "dtype": "bfloat16",
                    "overwrite": True, "allow_stale": True, "seed": 0}
    assert main(["build", "p.json"]) == 0
    assert seen["teacher"] is None and seen["out"] is None and seen["overwrite"] is False


def test_cli_stale_plan_exits_4(built, tmp_path, capsys):
    from mosaic_search.cli import main

    plan = built["qwen3"][0].plan([Candidate.of("gqa")] * LAYERS, "gqa")
    code = main(["build", str(plan), "--teacher", str(built["llama"][0].dir), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 4 and len(err.strip().splitlines()) == 1 and "allow-stale" in err


def test_check_refuses_a_built_model_and_no_tokens(built):
    _, _, mixed = built["qwen3"]
    with pytest.raises(UsageError, match="already a model built by mosaic; check its teacher"):
        builder.check_generation(str(mixed))
    with pytest.raises(UsageError, match="new_tokens must be 1 or more"):
        builder.check_generation("tiny", new_tokens=0)


@pytest.mark.parametrize("kind", ARCHS)
@pytest.mark.slow
def test_distill_trains_every_operator_of_every_architecture(built, kind, tmp_path):
    """Both distillation stages through every mixer's PyTorch path (gradients included), on samples of the teacher;
    a sharded build in, a model that loads like a build out."""
    from mosaic_search.recovery import distill

    t, _, mixed = built[kind]
    out = distill.distill(str(mixed), data="self", steps=1, batch_size=2, seq_len=16, quality=False,
                          trainable="mixers", out=tmp_path / "d")
    record = load_distill_record(out)
    assert [r["stage"] for r in record.losses] == ["offpolicy", "onpolicy"]
    assert all(math.isfinite(r["loss"]) and r["loss"] > 0 for r in record.losses)
    assert record.trainable_parameters == sum(
        p.numel() for layer in surgery.decoder_layers(load_model(str(mixed))) if hasattr(layer, "self_attn")
        for p in layer.self_attn.parameters())
    model = load_model(str(out))
    assert [c["op"] for c in model.config.mosaic["layers"]] == [c.op for c in MIXED]


def test_default_folders_of_different_plans_differ():
    """The letters of a pattern say the operator, not its window, rank, KV heads or MLP: a plan whose layers carry any
    of those is named by a digest of its layers too, so no two plans share a default folder."""
    parse = Candidate.parse
    plans = [["gqa", "gqa", "drop"], ["gqa", "gqa+mlp:width=256", "drop"], ["gqa", "gqa+mlp:width=128", "drop"],
             ["gqa", "gqa+nomlp", "drop"], ["gqa", "gqa:kv_heads=1", "drop"], ["gqa", "gqa:kv_heads=1+mlp:width=256",
                                                                              "drop"],
             ["gqa", "swa:window=4", "drop"], ["gqa", "swa:window=8", "drop"], ["gqa"] * 65, ["gqa"] * 64 + ["gdn"]]
    names = [builder.default_out("m", [parse(c) for c in layers]) for layers in plans]
    assert len(set(names)) == len(plans)
    assert names[0] == Path("build") / "m-GGX"  # letters that say every choice stay the whole name
    assert re.fullmatch(r"m-GgX-[0-9a-f]{8}", names[1].name) and re.fullmatch(r"m-G{32}-[0-9a-f]{8}", names[8].name)
    assert builder.default_out("m", [parse(c) for c in plans[1]]) == names[1]  # the same plan, the same folder
