"""What a built model returns beside its logits: one hidden state per decoder layer plus the embeddings, whatever
each layer's operator (a dropped layer included), in `forward` and inside `generate`; attention weights, which the
mixers never materialise, refused in one line rather than returned short."""

from __future__ import annotations

import pytest
import torch
from test_builder import LAYERS, MIXED, Teacher, _ids, _load_built

from mosaic_search import builder
from mosaic_search.hf.surgery import decoder_layers


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    """A qwen3 build with every operator, one layer each, and the position of its dropped layer."""
    root = tmp_path_factory.mktemp("outputs")
    model = _load_built(builder.build(Teacher("qwen3", root).plan(MIXED, "mixed"), out=root / "mixed"))
    return model, [c.op for c in MIXED].index("drop")


def test_forward_returns_a_hidden_state_per_layer_at_its_index(mixed):
    model, dropped = mixed
    seen = []
    hooks = [layer.register_forward_hook(lambda m, i, out: seen.append(out[0] if isinstance(out, tuple) else out))
             for layer in decoder_layers(model)]
    try:
        with torch.no_grad():
            out = model(_ids(), output_hidden_states=True)
    finally:
        for h in hooks:
            h.remove()
    states = out.hidden_states
    assert len(states) == LAYERS + 1 == len(seen) + 1
    assert torch.equal(states[0], model.get_input_embeddings()(_ids()))
    for i in range(LAYERS - 1):  # the last entry is after the final norm, as transformers returns it
        assert torch.equal(states[i + 1], seen[i]), i
    assert torch.equal(states[dropped + 1], states[dropped])  # the dropped layer passes its input through


def test_generate_returns_a_hidden_state_per_layer_at_every_step(mixed):
    model, _ = mixed
    with torch.no_grad():
        out = model.generate(_ids(), max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=0,
                             output_hidden_states=True, return_dict_in_generate=True)
    assert len(out.hidden_states) == 3 and all(len(step) == LAYERS + 1 for step in out.hidden_states)


@pytest.mark.parametrize("how", ["forward", "generate"])
def test_attention_weights_are_refused_in_one_line(mixed, how):
    model, _ = mixed
    with pytest.raises(ValueError, match="^output_attentions: ") as e, torch.no_grad():
        if how == "forward":
            model(_ids(), output_attentions=True)
        else:
            model.generate(_ids(), max_new_tokens=2, output_attentions=True, return_dict_in_generate=True)
    assert "\n" not in str(e.value)


def test_a_build_with_windows_per_layer_warns_nothing_false(tmp_path):
    """A fresh process (transformers warns once per process) builds and loads a Qwen2.5-VL with two windows: no
    warning about reading the global window, nor about sliding windows not implemented for sdpa."""
    import os
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    script = textwrap.dedent(f"""
        import sys, torch
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_builder import LAYERS, Teacher, _load_built
        from mosaic_search import builder
        from mosaic_search.operators import Candidate
        root = Path({str(tmp_path)!r})
        teacher = Teacher("qwen2_5_vl", root)
        layers = [Candidate.of("swa", {{"window": 4}}), Candidate.of("swa", {{"window": 8}})]
        layers += [Candidate.of("gqa")] * (LAYERS - 2)
        model = _load_built(builder.build(teacher.plan(layers, "w"), out=root / "w"))
        with torch.no_grad():
            model.generate(torch.tensor([[5, 6, 7, 8]]), max_new_tokens=2, do_sample=False, pad_token_id=0)
        print("generated")
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0 and "generated" in run.stdout, run.stderr[-2000:]
    assert "sliding_window" not in run.stderr and "Sliding Window Attention" not in run.stderr, run.stderr
