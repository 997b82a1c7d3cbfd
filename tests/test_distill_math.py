"""Stage 5's mathematics with exact expected values (the divergences, the hidden-state term, the learning-rate
schedule) and its settings record (the one source of the library's and the command line's defaults)."""

from __future__ import annotations

import dataclasses
import inspect
import math

import pytest
import torch

from mosaic_search.errors import UsageError
from mosaic_search.recovery import losses
from mosaic_search.recovery.distill import distill
from mosaic_search.recovery.settings import DEFAULT_STEPS, DEFAULTS, PARAMETERS, DistillSettings

KINDS = ("forward", "reverse", "jsd")


def _logits(*probs):
    """Logits [1, n, V] (float64) of the given next-token distributions, one per position."""
    return torch.tensor([[[math.log(p) for p in row] for row in probs]], dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
def test_each_divergence_is_zero_between_equal_distributions(kind):
    x = torch.randn(2, 5, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert losses.divergence(x, x, kind).shape == (2, 5)
    assert losses.divergence(x, x, kind).abs().max() < 1e-15
    # logits that differ by a constant per position are the same distribution
    assert losses.divergence(x, x + 3.0, kind).abs().max() < 1e-12


def test_forward_and_reverse_kl_on_a_hand_computed_example():
    """Teacher (0.5, 0.5), student (0.9, 0.1):
    forward KL(t || s) = 0.5 ln(0.5/0.9) + 0.5 ln(0.5/0.1) = 0.5 ln(25/9) = ln(5/3) = 0.5108256...
    reverse KL(s || t) = 0.9 ln(0.9/0.5) + 0.1 ln(0.1/0.5) = 0.9 ln 1.8 - 0.1 ln 5 = 0.3680642...
    JSD(0.5) with m = (0.7, 0.3): 0.5 (0.5 ln(5/7) + 0.5 ln(5/3)) + 0.5 (0.9 ln(9/7) + 0.1 ln(1/3)) = 0.1017492..."""
    t, s = _logits((0.5, 0.5)), _logits((0.9, 0.1))
    forward = losses.divergence(t, s, "forward").item()
    reverse = losses.divergence(t, s, "reverse").item()
    jsd = losses.divergence(t, s, "jsd").item()
    assert forward == pytest.approx(math.log(5 / 3), rel=1e-12) and forward == pytest.approx(0.5108256, abs=1e-7)
    assert reverse == pytest.approx(0.9 * math.log(1.8) - 0.1 * math.log(5), rel=1e-12)
    assert reverse == pytest.approx(0.3680642, abs=1e-7)
    assert jsd == pytest.approx(0.5 * (0.5 * math.log(5 / 7) + 0.5 * math.log(5 / 3))
                                + 0.5 * (0.9 * math.log(9 / 7) + 0.1 * math.log(1 / 3)), rel=1e-12)
    assert jsd == pytest.approx(0.1017492, abs=1e-7)
    # the arguments are (teacher, student): reverse is forward with the roles swapped
    assert losses.divergence(s, t, "forward").item() == pytest.approx(reverse, rel=1e-12)


def test_jsd_is_symmetric_and_at_most_log_2_reached_on_disjoint_supports():
    g = torch.Generator().manual_seed(1)
    a, b = (4 * torch.randn(3, 6, 11, dtype=torch.float64, generator=g) for _ in range(2))
    ab, ba = losses.divergence(a, b, "jsd"), losses.divergence(b, a, "jsd")
    torch.testing.assert_close(ab, ba, rtol=1e-12, atol=1e-15)
    assert (ab > 0).all() and (ab < math.log(2)).all()
    # disjoint supports (a probability of exp(-1e4) is 0 in float64): exactly log 2
    t = torch.tensor([[[0.0, -1e4, -1e4], [-1e4, 0.0, -1e4]]], dtype=torch.float64)
    s = torch.tensor([[[-1e4, 0.0, -1e4], [-1e4, -1e4, 0.0]]], dtype=torch.float64)
    torch.testing.assert_close(losses.divergence(t, s, "jsd"), torch.full((1, 2), math.log(2), dtype=torch.float64),
                               rtol=1e-15, atol=0.0)


def test_hidden_nmse_on_a_hand_example():
    """Two layers, one row of two tokens, d = 2. Layer 1: teacher (1, 0), (0, 2), student (1, 1), (0, 2): squared
    error 1 over the teacher's 1 + 4 = 5, 0.2. Layer 2: the student twice the teacher: error = the teacher's squares,
    1.0. Mean 0.6. Masking the second token: layer 1 becomes 1 / 1 = 1.0 (its student (9, 9) there is ignored),
    layer 2 stays 1.0."""
    t1 = torch.tensor([[[1.0, 0.0], [0.0, 2.0]]])
    s1 = torch.tensor([[[1.0, 1.0], [0.0, 2.0]]])
    t2 = torch.tensor([[[3.0, -1.0], [0.5, 2.0]]])
    ones = torch.ones(1, 2)
    assert losses.hidden_nmse([s1, 2 * t2], [t1, t2], ones).item() == pytest.approx(0.6, abs=1e-7)
    assert losses.hidden_nmse([s1], [t1], ones).item() == pytest.approx(0.2, abs=1e-7)
    masked = torch.tensor([[1.0, 0.0]])
    s1[0, 1] = 9.0
    assert losses.hidden_nmse([s1, 2 * t2], [t1, t2], masked).item() == pytest.approx(1.0, abs=1e-7)
    assert losses.hidden_nmse([t1, t2], [t1, t2], ones).item() == 0.0


def test_the_learning_rate_schedule_at_its_first_warm_and_last_steps():
    """100 steps: warm-up over 10 (0.1, 0.2, ..., 1.0), the peak again at step 10 (cosine at 0), half way down the
    cosine (0.1 + 0.9 / 2 = 0.55) at step 55, and 0.1 + 0.45 (1 + cos(89 pi / 90)) = 0.100274 at the last."""
    assert losses.schedule(0, 100) == pytest.approx(0.1, abs=1e-15)
    assert losses.schedule(4, 100) == pytest.approx(0.5, abs=1e-15)
    assert losses.schedule(9, 100) == 1.0 and losses.schedule(10, 100) == 1.0
    assert losses.schedule(55, 100) == pytest.approx(0.55, abs=1e-15)
    assert losses.schedule(99, 100) == pytest.approx(0.1 + 0.45 * (1 + math.cos(89 * math.pi / 90)), abs=1e-15)
    assert losses.schedule(99, 100) == pytest.approx(0.100274, abs=1e-6)
    steps = [losses.schedule(k, 100) for k in range(100)]
    assert all(a > b for a, b in zip(steps[10:], steps[11:]))  # decays at every step after the warm-up
    # a stage shorter than 10 steps warms up in one: it starts at the peak
    assert losses.schedule(0, 1) == 1.0 and losses.schedule(0, 5) == 1.0
    assert losses.schedule(4, 5) == pytest.approx(0.1 + 0.45 * (1 + math.cos(3 * math.pi / 4)), abs=1e-15)


# ---- the settings record -------------------------------------------------------------------------------------------

def test_distills_keyword_defaults_are_the_settings_records():
    signature = inspect.signature(distill).parameters
    assert {name: signature[name].default for name in PARAMETERS} == dataclasses.asdict(DEFAULTS)
    # run options, not settings: where and how the output is written and where training runs
    assert set(signature) - set(PARAMETERS) == {"model", "out", "resume", "overwrite", "device", "dtype", "progress"}


def test_the_budget_per_stage():
    assert DistillSettings().steps_per_stage == DEFAULT_STEPS == 100
    assert DistillSettings(steps=7).steps_per_stage == 7
    assert DistillSettings(tokens=1000, batch_size=2, seq_len=256).steps_per_stage == 2  # ceil(1000 / 512)
    s = DistillSettings(stage="both", steps=2)
    assert s.stages == ("offpolicy", "onpolicy") and s.step_stages == ["offpolicy"] * 2 + ["onpolicy"] * 2
    assert DistillSettings(stage="onpolicy", steps=3).step_stages == ["onpolicy"] * 3


@pytest.mark.parametrize("kw, message", [
    (dict(lr=-1), "lr must be positive, got -1"),
    (dict(batch_size=0), "batch_size must be positive, got 0"),
    (dict(checkpoint_every=0), "checkpoint_every must be positive, got 0"),
    (dict(seq_len=1), "seq_len must be at least 2, got 1"),
    (dict(oracle_weight=2), "oracle_weight must be in [0, 1], got 2"),
    (dict(hidden_weight=-0.5), "hidden_weight must be at least 0, got -0.5"),
    (dict(steps=0), "steps must give at least one step, got 0"),
    (dict(tokens=0), "tokens must give at least one step, got 0"),
    (dict(steps=2, tokens=9), "steps and tokens exclude each other"),
    (dict(quality=False, eval_data="held.txt"), "eval_data is read only to measure quality; with `quality` off it "
                                                "would be ignored"),
    (dict(divergence="revers"), 'divergence "revers": choose one of forward, reverse, jsd (did you mean "reverse"?)'),
    (dict(parallel="zero"), 'parallel "zero": choose one of ddp, fsdp'),
])
def test_bad_settings_name_the_library_parameter(kw, message):
    with pytest.raises(UsageError) as e:
        DistillSettings(**kw)
    assert str(e.value) == message
    with pytest.raises(UsageError, match="^" + message.split(" ")[0]):  # the library's entry point says the same
        distill("unused", **kw)
