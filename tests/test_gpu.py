"""CUDA paths against the CPU references, in bf16 (run on a GPU machine: pytest -m gpu)."""

from __future__ import annotations

import pytest
import torch
from conftest import cache_for, every_operator

from mosaic_search.hf import surgery
from mosaic_search.modeling import delta_rule as dr
from mosaic_search.operators import Candidate

pytestmark = pytest.mark.gpu
BF16_REL = 2e-2  # bf16 operands: relative error of a few 1e-3, with headroom for long recurrences


def rel_err(a, b):
    a, b = a.float().cpu(), b.float().cpu()
    assert torch.isfinite(a).all(), "non-finite output"
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(scope="module")
def fla_ok():
    if not dr.fla_available():
        pytest.fail("fla is not importable on this CUDA machine (pip install 'mosaic-search[cuda]')")


def _inputs(per_channel, b=2, t=300, h=4, d=64, strength=1.0):
    g = torch.Generator().manual_seed(t + h)
    q, k = (torch.nn.functional.normalize(torch.randn(b, t, h, d, generator=g), dim=-1) for _ in range(2))
    v = torch.randn(b, t, h, d, generator=g)
    shape = (b, t, h, d) if per_channel else (b, t, h)
    gate = -strength * torch.rand(*shape, generator=g)
    beta = torch.rand(b, t, h, generator=g)
    s0 = torch.randn(b, h, d, d, generator=g) * 0.1
    return q, k, v, gate, beta, s0


@pytest.mark.parametrize("per_channel", [False, True], ids=["gdn", "kda"])
def test_fla_chunk_kernel_matches_reference(fla_ok, per_channel):
    q, k, v, g, beta, s0 = _inputs(per_channel)
    ref_o, ref_s = dr.chunked_delta_rule(q, k, v, g, beta, 1.0, s0)
    cuda = [x.cuda() for x in (q, k, v)]
    cuda = [x.to(torch.bfloat16) for x in cuda]
    o, s = dr.delta_rule(*cuda, g.cuda().float(), beta.cuda().to(torch.bfloat16), 1.0, s0.cuda(), use_fla=True)
    assert rel_err(o, ref_o) < BF16_REL
    assert rel_err(s, ref_s) < BF16_REL


@pytest.mark.parametrize("per_channel", [False, True], ids=["gdn", "kda"])
def test_fla_recurrent_kernel_matches_reference(fla_ok, per_channel):
    q, k, v, g, beta, s0 = _inputs(per_channel, t=1)
    ref_o, ref_s = dr.recurrent_delta_rule(q, k, v, g, beta, 1.0, s0)
    o, s = dr.delta_rule(*(x.cuda().to(torch.bfloat16) for x in (q, k, v)), g.cuda().float(),
                         beta.cuda().to(torch.bfloat16), 1.0, s0.cuda(), use_fla=True)
    assert rel_err(o, ref_o) < BF16_REL
    assert rel_err(s, ref_s) < BF16_REL


@pytest.mark.parametrize("cand", every_operator(window=16), ids=str)
def test_mixer_on_cuda_bf16_matches_cpu_fp32(qwen3, cand, fla_ok):
    """Prefill of 150 tokens then 5 decode steps through each mixer's CUDA path (fla for gdn/kda, FlexAttention for
    the swa prefill, mla's absorbed decode)."""
    torch.manual_seed(3)
    cpu = surgery.build_mixer(qwen3, 1, cand).float()
    gpu = surgery.build_mixer(qwen3, 1, cand)
    gpu.load_state_dict(cpu.state_dict())
    gpu = gpu.cuda().to(torch.bfloat16)
    x = torch.randn(2, 155, qwen3.config.hidden_size)
    stack = surgery.text_stack(qwen3)

    def run(mixer, x, device, dtype):
        cache = cache_for(qwen3, cand)
        xs = x.to(device, dtype)
        outs = []
        for start, end in [(0, 150)] + [(i, i + 1) for i in range(150, 155)]:
            chunk = xs[:, start:end]
            pe = tuple(p.to(device, dtype) for p in stack.position_embeddings(chunk.float().cpu(), start))
            out = mixer(chunk, position_embeddings=pe, cache=cache)
            outs.append(out[0] if isinstance(out, tuple) else out)
        return torch.cat(outs, 1)

    with torch.no_grad():
        ref = run(cpu, x, "cpu", torch.float32)
        got = run(gpu, x, "cuda", torch.bfloat16)
    if cand.op in ("none",):
        assert got.abs().max() == 0
        return
    assert rel_err(got, ref) < BF16_REL, str(cand)


def test_timing_harness_captures_decode_in_a_cuda_graph():
    from mosaic_search.artifacts.profile import parse_workload
    from mosaic_search.latency.harness import load_bench
    from mosaic_search.latency.timing import CudaTimer

    _, bench = load_bench("tiny", "cuda")
    w = parse_workload("decode:1k")
    timer = CudaTimer(warmup=2, repeats=5)
    fn = bench.model_fn(w)
    with torch.inference_mode():
        graph_step = timer._graph(fn)  # raises if any kernel in the decode step cannot be captured
        graph_step()
    assert all(t > 0 for t in timer(fn, "decode"))


def test_compiled_decode_step_matches_eager_for_every_operator(fla_ok):
    """Inductor's code for a decode step through every mixer (fla's kernels included) against eager, in bf16."""
    from mosaic_search.artifacts.profile import parse_workload
    from mosaic_search.latency.harness import load_bench

    w = parse_workload("decode:1k")
    layers = every_operator(window=16)
    outs = []
    for compiled in (True, False):
        _, bench = load_bench("tiny", "cuda", compile_decode=compiled)
        bench.assign(layers)
        torch.manual_seed(5)  # same inputs and random cache contents for both
        step = bench.model_fn(w)
        with torch.inference_mode():
            outs.append(step())
        assert bench.fallbacks == []
    assert rel_err(outs[0], outs[1]) < BF16_REL


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_generate_compiles_the_static_decode_step_and_keeps_the_tokens(fla_ok, dtype):
    """A built model with every operator, through plain `generate` on CUDA: its default static cache makes
    transformers compile the decode step (fla's kernels inside the custom op, no graph break) and the tokens equal
    the uncompiled dynamic-cache generation (float32; bfloat16: the first tokens, before rounding can tip a tie)."""
    from mosaic_search import builder
    from mosaic_search.hf.models import load_model

    layers = every_operator(window=16) + [Candidate.of("gqa")]
    model = load_model("tiny", dtype=dtype).cuda()
    torch.manual_seed(0)
    for i, c in enumerate(layers):
        surgery.swap(model, i, c)
    built = builder.as_built(model, layers).cuda()
    ids = torch.randint(3, 200, (1, 40), device="cuda")
    kwargs = dict(max_new_tokens=24, min_new_tokens=24, do_sample=False, pad_token_id=0)
    torch._dynamo.reset()
    with torch.no_grad():
        compiled = built.generate(ids, **kwargs)  # static cache: compiled + CUDA graphs
        eager = built.generate(ids, cache_implementation="dynamic", **kwargs)
    assert getattr(built, "_compiled_call", None) is not None, "generate did not compile the decode step"
    n = 24 if dtype == "float32" else 4
    assert torch.equal(compiled[:, :40 + n], eager[:, :40 + n])
