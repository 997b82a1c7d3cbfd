"""The distillation loop: optimizer steps of both stages, each seeded from (seed, step, rank), so that a run resumed
from a checkpoint retraces an uninterrupted one; under torchrun the loss is averaged over the processes."""

from __future__ import annotations

from dataclasses import dataclass

from ..hf import distributed
from . import losses
from .batches import Batches
from .loading import Models
from .settings import DistillSettings

BETAS = (0.9, 0.95)
CLIP_NORM = 1.0


def optimizer(params, lr: float):
    """AdamW over the (name, parameter) pairs that train, without weight decay."""
    import torch

    return torch.optim.AdamW([p for _, p in params], lr=lr, betas=BETAS, weight_decay=0.0)


def step_seed(seed: int, step: int, rank: int) -> int:
    """The torch seed of step `step` on process `rank` (its on-policy samples)."""
    return (seed * 1_000_003 + step) * 1009 + rank


@dataclass
class Trainer:
    """One run's training state: its settings, models, data, the (name, parameter) pairs that train, their
    optimizer, and this process's rank among `world`."""

    settings: DistillSettings
    models: Models
    batches: Batches
    params: list
    opt: object
    rank: int = 0
    world: int = 1

    def step(self, step: int) -> float:
        """Optimizer step `step` (0-based, over both stages) of its stage; the loss averaged over the processes."""
        import torch

        s, stage = self.settings, self.settings.step_stages[step]
        torch.manual_seed(step_seed(s.seed, step, self.rank))
        batch = self.batches.batch(step, s.batch_size, self.rank, self.world, prompts=stage == "onpolicy")
        for group in self.opt.param_groups:  # the schedule restarts with each stage (they run one after the other)
            group["lr"] = s.lr * losses.schedule(step % s.steps_per_stage, s.steps_per_stage)
        if stage == "offpolicy":
            loss = losses.offpolicy_loss(self.models.wrapped, self.models.teacher, batch, s.hidden_weight)
        else:
            loss = losses.onpolicy_loss(self.models, batch, s.divergence, s.oracle_weight, s.hidden_weight)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for _, p in self.params], CLIP_NORM)
        self.opt.step()
        return distributed.mean(loss.item(), self.world)

    def train(self, start: int, done: list, progress=None, checkpoint=None) -> list:
        """Steps `start` to the end after the `done` ones' losses; every `checkpoint_every` steps (but the last) every
        process calls `checkpoint(step, losses)` then waits for the others. Returns every step's loss record."""
        stages, every = self.settings.step_stages, self.settings.checkpoint_every
        done = list(done)
        for step in range(start, len(stages)):
            loss = self.step(step)
            done.append({"step": step + 1, "stage": stages[step], "loss": loss})
            if progress and self.rank == 0:
                progress(step + 1, len(stages), f"{stages[step]} loss {loss:.4f}")
            if (step + 1) % every == 0 and step + 1 < len(stages):
                if checkpoint is not None:
                    checkpoint(step + 1, done)
                distributed.barrier(self.world)
        return done
