"""The distillation data: the training sequences (read from a file or sampled from the teacher), and each step's
batch of them, a pure function of (seed, step) so that a resumed run trains on what an uninterrupted one would."""

from __future__ import annotations

from ..errors import check

# `self` data: the off-policy stage's sequences, sampled once (at most this many; fewer are reused by epochs). On the
# embedded teacher, 400 fresh samples recovered 80.5% of a plan's held-out gap where its 64 calibration sequences,
# seen about 6 times each, recovered 21% (BENCHMARKS.md "Recovery").
SELF_SEQUENCES = 1024
# what reading a data file may leave out, kept in the record's data description
READING_NOTES = ("image_rows_skipped", "image_rows_cut", "replies_past_seq_len", "text_tokens_left_out")


class Batch:
    """One step's rows as model inputs: `sequences` (an `hf.data.Windows`: token ids, lengths, images), and the
    image inputs of the rows that have images (with Qwen3-VL's `mm_token_type_ids`, which marks the image tokens for
    its 3-D rotary positions)."""

    def __init__(self, sequences, image_token: int | None = None):
        self.sequences, self.image_token = sequences, image_token

    def inputs(self, device) -> dict:
        """The keyword inputs of the model's forward, on `device`."""
        from ..hf.vision import model_inputs

        return model_inputs(self.sequences.ids, self.sequences.images, self.image_token, device)

    def mask(self, device):
        """[b, T] 1.0 on real tokens, 0.0 on the padding after a short image row."""
        import torch

        real = torch.arange(self.sequences.ids.shape[1])[None] < torch.tensor(self.sequences.lengths)[:, None]
        return real.float().to(device)


class Batches:
    """The training sequences and, per step, which of them each rank trains on: epochs are seeded permutations of
    the sequences. On-policy steps draw from the sequences that can prompt the model: text windows (continued after
    their first part) and image chat rows that end with the assistant's reply (answered anew after their last
    question, so that on-policy training also reads images); an image row without a reply is off-policy data only."""

    def __init__(self, sequences, source: str, seed: int, image_token: int | None, notes: dict | None = None):
        self.sequences, self.source, self.seed, self.image_token = sequences, source, seed, image_token
        self.notes = notes or {}  # what reading the file noted (`hf.data.tokenize_file`)
        self.prompts = [i for i, (im, reply) in enumerate(zip(sequences.images, sequences.replies))
                        if im is None or reply is not None]

    def describe(self) -> dict:
        """The data as the distill record states it (its keys name the sequences `windows`, as every record has)."""
        from ..hf.data import display_name

        images = sum(im is not None for im in self.sequences.images)
        return {"source": display_name(self.source), "windows": len(self.sequences),
                "text_windows": len(self.sequences) - images, "image_windows": images,
                "prompt_windows": len(self.prompts), "seq_len": int(self.sequences.ids.shape[1]),
                "tokens": int(sum(self.sequences.lengths)),
                **{k: v for k, v in self.notes.items() if k in READING_NOTES}}

    def batch(self, step: int, size: int, rank: int, world: int, prompts: bool = False) -> Batch:
        """This rank's share of step `step`'s global batch of `size` sequences (`prompts`: of those that can prompt
        an on-policy step)."""
        import torch

        pool = self.prompts if prompts else list(range(len(self.sequences)))
        picked = []
        for pos in range(step * size, (step + 1) * size):
            epoch, k = divmod(pos, len(pool))
            order = torch.randperm(len(pool), generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
            picked.append(pool[int(order[k])])
        return Batch(self.sequences.select(picked[rank::world]), self.image_token)


def training_batches(source: str, tokenizer, teacher: str, ref, want: int, seq_len: int, seed: int, world: int,
                     sharded: bool) -> Batches:
    """The training sequences of `seq_len` tokens: the first `want` of the data file, or for `self` at most
    SELF_SEQUENCES sampled from the teacher `ref` (sampling is sequential decoding, the slowest part of a run; rank 0
    samples and sends them, or with a `sharded` teacher every process samples the same ones in step); fewer than
    `want` are reused epoch after epoch."""
    from ..hf import data as data_mod
    from ..hf.surgery import dims_of

    positions = dims_of(ref.config).max_position
    check(seq_len <= positions, "seq_len", f"{seq_len} exceeds the teacher's {positions} positions")
    notes: dict = {}
    if source == data_mod.SELF:
        sampled = data_mod.shared_samples(ref, min(want, SELF_SEQUENCES), seq_len, seed, world, every_rank=sharded)
        sequences = data_mod.Windows.of(sampled)
    else:
        vision = None
        if getattr(ref.config, "vision_config", None) is not None:
            vision = data_mod.Vision(str(teacher), ref.config.image_token_id)
        sequences, _, notes = data_mod.tokenize_file(source, tokenizer, want, 0, seq_len, vision, verb="training on")
    return Batches(sequences, source, seed, getattr(ref.config, "image_token_id", None), notes)
