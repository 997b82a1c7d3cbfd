"""What a distillation run trains with: one frozen, validated record, the single source of `distill()`'s keyword
defaults, of the `mosaic distill` options' defaults, of the checkpoint's fingerprint and of the distill record's
settings. Torch-free, so that the CLI reads its defaults without loading torch."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from ..errors import UsageError, check, did_you_mean, flags, integer, number, path_arg
from ..hf.distributed import PARALLEL

STAGES = ("offpolicy", "onpolicy", "both")
TRAINABLE = ("replaced", "mixers", "all")
DIVERGENCES = ("forward", "reverse", "jsd")
DEFAULT_STEPS = 100  # per stage, when neither steps nor tokens is given; BENCHMARKS.md "Recovery" shows what it buys


@dataclass(frozen=True)
class DistillSettings:
    """The choices of a distillation run, validated on construction (a one-line UsageError naming the parameter).

    `steps` or `tokens` (per stage; neither: DEFAULT_STEPS) sets the budget; `teacher` None means the one the model's
    plan records, `data` None the teacher's own samples. `checkpoint_every`, `eval_data` and `quality` change when a
    run saves and what it measures, not the weights it reaches, so the checkpoint's fingerprint leaves them out.
    """

    teacher: str | None = None
    oracle: str | None = None
    oracle_weight: float = 0.5
    data: str | None = None
    stage: str = "both"
    steps: int | None = None
    tokens: int | None = None
    lr: float = 3e-4  # 1e-3 recovered less on both measured plans of the embedded teacher (BENCHMARKS.md)
    trainable: str = "all"  # on the embedded teacher `all` recovered more than `mixers` at the same steps
    hidden_weight: float = 0.1
    divergence: str = "forward"
    batch_size: int = 4
    seq_len: int = 512
    checkpoint_every: int = 25
    eval_data: str | None = None
    quality: bool = True
    seed: int = 0
    parallel: str = "ddp"

    def __post_init__(self):
        _choice("stage", self.stage, STAGES)
        _choice("trainable", self.trainable, TRAINABLE)
        _choice("divergence", self.divergence, DIVERGENCES)
        _choice("parallel", self.parallel, PARALLEL)
        # each type first: a bool or a string compared with a number would be accepted or raise a bare TypeError
        for param, kind in (("lr", number), ("oracle_weight", number), ("hidden_weight", number),
                            ("batch_size", integer), ("checkpoint_every", integer), ("seq_len", integer),
                            ("seed", integer)):
            value = getattr(self, param)
            check(kind(value), param, f"must be {'a number' if kind is number else 'an integer'}, got {value!r}")
        for param in ("steps", "tokens"):
            value = getattr(self, param)
            check(value is None or integer(value), param, f"must be an integer, got {value!r}")
        flags(quality=self.quality)
        for param in ("teacher", "oracle"):
            path_arg(param, getattr(self, param), optional=True, what="a model id or directory")
        for param in ("data", "eval_data"):
            path_arg(param, getattr(self, param), optional=True)
        for param in ("lr", "batch_size", "checkpoint_every"):
            value = getattr(self, param)
            check(value > 0, param, f"must be positive, got {value}")
        check(self.seq_len >= 2, "seq_len", f"must be at least 2, got {self.seq_len}")
        check(0 <= self.oracle_weight <= 1, "oracle_weight", f"must be in [0, 1], got {self.oracle_weight}")
        check(self.hidden_weight >= 0, "hidden_weight", f"must be at least 0, got {self.hidden_weight}")
        if self.steps is not None and self.tokens is not None:
            raise UsageError("steps and tokens exclude each other")
        check(self.quality or self.eval_data is None, "eval_data",
              "is read only to measure quality; with `quality` off it would be ignored")
        if self.tokens is not None:
            check(self.steps_per_stage >= 1, "tokens", f"must give at least one step, got {self.tokens}")
        check(self.steps_per_stage >= 1, "steps", f"must give at least one step, got {self.steps}")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages in the order they run."""
        return ("offpolicy", "onpolicy") if self.stage == "both" else (self.stage,)

    @property
    def steps_per_stage(self) -> int:
        """Optimizer steps of each stage: `steps`, or enough global batches of `seq_len` tokens to cover `tokens`."""
        if self.tokens is not None:
            return math.ceil(self.tokens / (self.batch_size * self.seq_len))
        return DEFAULT_STEPS if self.steps is None else self.steps

    @property
    def step_stages(self) -> list[str]:
        """The stage of every optimizer step of the run, in order."""
        return [s for s in self.stages for _ in range(self.steps_per_stage)]

    def recorded(self, model: str, model_sha256: str, world_size: int) -> dict:
        """The settings that decide the weights a run reaches, as the checkpoint fingerprints them and the distill
        record stores them, with the run's model (`model_sha256`: `checkpoint.model_sha256`) and process count;
        the distill loop adds the data it sampled or read (`data`)."""
        return dict(model=str(model), model_sha256=model_sha256, teacher=self.teacher, oracle=self.oracle,
                    oracle_weight=self.oracle_weight, stages=list(self.stages), steps_per_stage=self.steps_per_stage,
                    lr=self.lr, trainable=self.trainable, hidden_weight=self.hidden_weight,
                    divergence=self.divergence, batch_size=self.batch_size, seq_len=self.seq_len, seed=self.seed,
                    world_size=world_size, parallel=self.parallel)


def _choice(param: str, value: str, choices) -> None:
    check(isinstance(value, str) and value in choices, param,
          f'"{value}": choose one of {", ".join(choices)}{did_you_mean(str(value), choices)}')


DEFAULTS = DistillSettings()
PARAMETERS = tuple(f.name for f in fields(DistillSettings))
