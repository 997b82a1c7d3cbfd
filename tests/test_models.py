"""Model resolution: tiny, local directories, hub ids offline, shipped configs."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_model

from mosaic_search.errors import UsageError
from mosaic_search.hf import models, surgery


def test_tiny_is_a_qwen3_with_gqa():
    model = models.load_model("tiny")
    dims = surgery.dims_of(model.config)
    assert model.config.model_type == "qwen3" and dims.num_layers >= 8 and dims.num_kv_heads < dims.num_heads


def test_local_directory_goes_through_from_pretrained(tmp_path):
    model = tiny_model("llama")
    model.save_pretrained(tmp_path / "m")
    loaded = models.load_model(str(tmp_path / "m"))
    ids = torch.tensor([[5, 6, 7]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)


def test_offline_unknown_id_is_one_line_asking_for_a_local_path(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError, match="pass a local model directory") as e:
        models.load_config("no-such-org/no-such-model")
    assert "\n" not in str(e.value)


def test_known_id_falls_back_to_shipped_config_for_dimensions(monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(UsageError):
        models.load_config("Qwen/Qwen3-VL-4B-Instruct")  # weights are never faked
    cfg = models.load_config("Qwen/Qwen3-VL-4B-Instruct", shipped_ok=True)
    assert "shipped config" in capsys.readouterr().err
    dims = surgery.dims_of(cfg)
    assert (dims.num_layers, dims.hidden_size, dims.num_heads, dims.num_kv_heads, dims.head_dim) == (36, 2560, 32, 8, 128)


@pytest.mark.parametrize("model_id", ["Qwen/Qwen3-8B", "meta-llama/Llama-3.2-1B-Instruct", "Qwen/Qwen3-VL-2B-Instruct",
                                      "Qwen/Qwen2.5-7B-Instruct", "mistralai/Mistral-7B-Instruct-v0.3",
                                      "microsoft/Phi-4-mini-instruct", "google/gemma-3-1b-it", "google/gemma-3-4b-it",
                                      "Qwen/Qwen2.5-VL-7B-Instruct"])
def test_shipped_configs_are_supported_architectures(monkeypatch, model_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cfg = models.load_config(model_id, shipped_ok=True)
    ref = models.model_ref(model_id, cfg)
    assert ref.num_hidden_layers == surgery.dims_of(cfg).num_layers and len(ref.config_sha256) == 64


def test_config_fingerprint_ignores_how_the_file_was_saved():
    a = models.load_config("tiny")
    b = models.load_config("tiny")
    b.transformers_version = "0.0.0"
    assert models.config_sha256(a) == models.config_sha256(b)
    b.num_hidden_layers += 1
    assert models.config_sha256(a) != models.config_sha256(b)


def test_shipped_configs_of_the_newer_families_read_as_their_checkpoints(monkeypatch):
    """Dimensions and per-layer teacher operators as the public config.json files give them."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def read(model_id):
        cfg = models.load_config(model_id, shipped_ok=True)
        d = surgery.dims_of(cfg)
        ops = [str(c) for c in surgery.teacher_ops(cfg)]
        return (d.num_layers, d.hidden_size, d.num_heads, d.num_kv_heads, d.head_dim), d, ops

    shape, d, ops = read("google/gemma-3-4b-it")  # 5 local (window 1024) : 1 global, query scale 256^-0.5
    assert shape == (34, 2560, 8, 4, 256) and d.softmax_scale == 256 ** -0.5 and d.norm_offset == 1.0
    assert [i for i, op in enumerate(ops) if op == "gqa"] == [5, 11, 17, 23, 29] and ops[0] == "swa:window=1024"
    shape, d, ops = read("microsoft/Phi-4-mini-instruct")  # partial RoPE; its 262144 window covers every position
    assert shape == (32, 3072, 24, 8, 128) and d.rope_dims == 96 and set(ops) == {"gqa"}
    shape, d, ops = read("Qwen/Qwen2.5-7B-Instruct")  # q/k/v biased, o not
    assert shape == (28, 3584, 28, 4, 128) and (d.attention_bias, d.out_bias) == (True, False)
    assert read("microsoft/Phi-3-mini-4k-instruct")[2] == ["swa:window=2047"] * 32
