"""Facts that live in one place: the supported families (one record per family in three tables of the remote code,
which must stay self-contained), whether a model is a mosaic build, the auto class of a model, the candidates every
stage measures, and how a VLM's image inputs are built."""

from __future__ import annotations

import pytest
import torch
from conftest import ARCHS, FAMILIES, tiny_config

from mosaic_search.hf import models, surgery, vision
from mosaic_search.hf.data import Windows
from mosaic_search.modeling import architectures, configuration_mosaic, modeling_mosaic
from mosaic_search.operators import Candidate


def test_the_remote_codes_three_family_tables_agree():
    assert set(architectures.ARCHITECTURES) == set(configuration_mosaic.CONFIGS) == set(modeling_mosaic.MODELS)
    for base, (config_class, _) in configuration_mosaic.CONFIGS.items():
        assert config_class.model_type == architectures.BUILT_PREFIX + base
        assert modeling_mosaic.MODELS[base].config_class is config_class


@pytest.mark.parametrize("kind", ARCHS + FAMILIES)
def test_a_familys_auto_class_is_the_packages(kind):
    """The auto class the remote code registers a built model under is the one the package loads its teacher with."""
    config = tiny_config(kind)
    assert configuration_mosaic.CONFIGS[config.model_type][1] == models.auto_class(config).__name__
    assert models.auto_class(config.to_dict()) is models.auto_class(config)  # config.json's dict says the same


@pytest.mark.parametrize("kind", ARCHS + FAMILIES)
def test_is_built_reads_the_built_model_type(kind, tmp_path):
    config = tiny_config(kind)
    assert not architectures.is_built(config) and architectures.base_model_type(config) == config.model_type
    obj = {k: v for k, v in config.to_dict().items() if k != "model_type"}
    built = configuration_mosaic.CONFIGS[config.model_type][0].from_dict(obj)
    assert architectures.is_built(built) and architectures.base_model_type(built) == config.model_type
    assert architectures.architecture_of(built) is architectures.ARCHITECTURES[config.model_type]
    built.save_pretrained(tmp_path / "b")
    config.save_pretrained(tmp_path / "t")
    assert models.is_mosaic_dir(str(tmp_path / "b")) and not models.is_mosaic_dir(str(tmp_path / "t"))


def test_a_model_is_resolved_once_into_one_record(monkeypatch):
    loads = []
    real = models.load_config
    monkeypatch.setattr(models, "load_config", lambda *a, **k: loads.append(a) or real(*a, **k))
    r = models.resolve("tiny")
    assert models.resolve(r) is r and loads == [("tiny",)]
    assert r.dims == surgery.dims_of(r.config) and r.teacher_ops == surgery.teacher_ops(r.config)
    assert r.ref == models.model_ref("tiny", r.config) and r.slug == "tiny" and not r.built
    assert loads == [("tiny",)]


def test_the_teachers_own_operators_come_first_in_every_stages_candidates():
    config = tiny_config("mistral")  # slides in every layer: its own operator is swa with its window
    own = Candidate.of("swa", {"window": 6})
    assert surgery.teacher_ops(config) == [own] * 3
    assert surgery.candidates("gdn,gqa", config) == [own, Candidate.of("gdn"), Candidate.of("gqa")]
    assert surgery.candidates("swa:window=6,gdn", config) == [own, Candidate.of("gdn")]  # not twice


def test_a_vlms_model_inputs_are_its_rows_images_in_order():
    ids = torch.tensor([[5, 9, 9, 6], [5, 7, 8, 6], [5, 9, 9, 6]])
    image = [{"pixel_values": torch.full((4, 3), float(i)), "image_grid_thw": torch.tensor([[1, 2, 2]])}
             for i in (1, 2)]
    rows = Windows(ids, [4, 4, 4], [image[0], None, image[1]])
    got = vision.model_inputs(rows.ids, rows.images, 9, "cpu")
    assert torch.equal(got["input_ids"], ids)
    assert torch.equal(got["pixel_values"], torch.cat([torch.full((4, 3), 1.0), torch.full((4, 3), 2.0)]))
    assert torch.equal(got["image_grid_thw"], torch.tensor([[1, 2, 2], [1, 2, 2]]))
    assert torch.equal(got["mm_token_type_ids"], (ids == 9).int())
    assert vision.model_inputs(ids[1:2], [None], 9, "cpu").keys() == {"input_ids"}


def test_a_random_image_has_the_asked_number_of_tokens():
    config = tiny_config("qwen3_vl").vision_config  # merge 2, patch 4, 3 channels, 2 frames per temporal patch
    pixels, grid = vision.random_image(config, 6, 2, "cpu", torch.float32)
    assert grid.tolist() == [[1, 4, 6], [1, 4, 6]]  # 2 x 3 merged patches per image
    assert pixels.shape == (2 * 24, 3 * 2 * 4 * 4)
