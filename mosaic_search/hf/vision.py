"""How a VLM's image inputs are built, in one place: the teacher's image processor and its limits, a chat row's
images expanded into image tokens and patches (calibration, training and question rows), the processor's per-row
outputs batched into model inputs, and a random image of a given size for timing.

The layout is Qwen-VL's: `pixel_values` [patches, channels x temporal patch x patch^2], `image_grid_thw` [images,
3] (frames, rows, columns of patches), one image token per merged patch in the ids, and `mm_token_type_ids`
marking those tokens for the 3-D rotary positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..assets import embedded_dir
from ..errors import UsageError


@dataclass
class Vision:
    """A VLM teacher's side of reading image rows: where its image processor is saved (a directory or an embedded
    teacher's alias), and its image token."""

    where: str
    image_token_id: int
    _processor: object = field(default=None, repr=False)

    def processor(self):
        """The teacher's Qwen2-VL image processor, loaded once. The PIL implementation is used on every machine:
        transformers' auto classes (and the full processor, which also wants a video processor) need torchvision."""
        if self._processor is None:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

            try:
                self._processor = Qwen2VLImageProcessorPil.from_pretrained(embedded_dir(self.where) or self.where)
            except (OSError, ValueError) as e:
                raise UsageError(f"{self.where}: no image processor to read images with ({_first_line(e)})") from None
        return self._processor

    def check(self, image, ref: str, where: str) -> None:
        """A one-line error naming the row when an image holds more pixels than the image processor takes (it would
        shrink it, and with it what there is to read)."""
        processor = self.processor()
        limit = (getattr(processor, "size", None) or {}).get("longest_edge") or getattr(processor, "max_pixels", None)
        if limit and image.width * image.height > limit:
            raise UsageError(f"{where}: image {ref} is {image.width}x{image.height} = {image.width * image.height} "
                             f"pixels, more than the teacher's image processor takes ({limit})")

    def token(self, tokenizer) -> str:
        """The image token as the chat template writes it."""
        return tokenizer.convert_ids_to_tokens(self.image_token_id)


@dataclass
class ImageSample:
    """A chat row with images: where it is (errors name it), its chat-template text and its images."""

    where: str
    text: str  # the chat template's text: one image token per image
    images: list  # PIL images, in order
    # the template's text of every turn before the last, then its generation prompt, when the row ends with the
    # assistant's reply (on-policy distillation has the model write that reply itself); else None
    prompt: str | None = None


def image_tokens(sample: ImageSample, tokenizer, vision: Vision) -> tuple[list, dict]:
    """(token ids, image inputs) of an image sample as Qwen3-VL's processor makes them: each image token of the
    chat template repeated once per merged patch of its image; a one-line error naming the row when the template
    placed a different number of image tokens than the row has images."""
    processor = vision.processor()
    try:
        inputs = processor(images=sample.images, return_tensors="pt")
    except ValueError as e:  # e.g. an aspect ratio the processor refuses
        raise UsageError(f"{sample.where}: the teacher's image processor refuses an image ({_first_line(e)})") from None
    per_image = (inputs["image_grid_thw"].prod(-1) // processor.merge_size ** 2).tolist()
    ids = tokenizer(sample.text, add_special_tokens=False, verbose=False)["input_ids"]
    if ids.count(vision.image_token_id) != len(per_image):
        raise UsageError(f"{sample.where}: the chat template placed {ids.count(vision.image_token_id)} image tokens "
                         f"for {len(per_image)} images")
    counts, expanded = iter(per_image), []
    for tok in ids:
        expanded += [tok] * next(counts) if tok == vision.image_token_id else [tok]
    return expanded, {"pixel_values": inputs["pixel_values"], "image_grid_thw": inputs["image_grid_thw"]}


def reply_start(sample: ImageSample, ids: list, tokenizer, vision: Vision) -> int | None:
    """Where the row's last reply starts in its expanded token ids `ids` (`image_tokens`): the length of its `prompt`
    with each image token expanded as in `ids`; None when the row has no prompt, the prompt does not hold every
    image, or its tokens are not a prefix of the row's (a tokenizer that merges across the turn boundary)."""
    if sample.prompt is None:
        return None
    head = tokenizer(sample.prompt, add_special_tokens=False, verbose=False)["input_ids"]
    token = vision.image_token_id
    if head.count(token) != len(sample.images):
        return None
    start = len(head) + ids.count(token) - len(sample.images)
    same = [t for t in ids[:start] if t != token] == [t for t in head if t != token]
    return start if same and ids[:start].count(token) == ids.count(token) else None


def image_tensors(images, device):
    """(pixel_values, image_grid_thw) of the rows that have images (per row: None or the processor's
    {"pixel_values", "image_grid_thw"}), concatenated in row order on `device`; None when no row has one."""
    import torch

    rows = [im for im in images if im is not None]
    if not rows:
        return None
    return (torch.cat([im["pixel_values"] for im in rows]).to(device),
            torch.cat([im["image_grid_thw"] for im in rows]).to(device))


def model_inputs(ids, images, image_token: int | None, device) -> dict:
    """The keyword inputs of a whole VLM forward for token ids [b, T] and their rows' images (see `image_tensors`):
    the ids, and with any image its pixels, grid and the `mm_token_type_ids` that mark its tokens."""
    out = {"input_ids": ids.to(device)}
    tensors = image_tensors(images, device)
    if tensors is not None:
        out["pixel_values"], out["image_grid_thw"] = tensors
        out["mm_token_type_ids"] = (ids == image_token).int().to(device)
    return out


def image_encoder(model):
    """The model's vision-tower call `get_image_features(pixels, grid)`, or None for a model without one."""
    inner = getattr(model, "model", None)
    return inner.get_image_features if hasattr(inner, "get_image_features") else None


def random_image(vision_config, image_tokens: int, batch: int, device, dtype):
    """(pixel_values, image_grid_thw) of one random image per sequence that the vision tower turns into
    `image_tokens` tokens: a grid of as square a shape as divides them (rows x columns merged patches)."""
    import torch

    m = vision_config.spatial_merge_size
    rows = next(d for d in range(int(image_tokens ** 0.5), 0, -1) if image_tokens % d == 0)
    grid = torch.tensor([[1, rows * m, image_tokens // rows * m]] * batch, device=device)
    patch = vision_config.in_channels * vision_config.temporal_patch_size * vision_config.patch_size ** 2
    return torch.randn(int(grid.prod(-1).sum()), patch, device=device, dtype=dtype), grid


def _first_line(e: Exception) -> str:
    return (str(e).splitlines() or [type(e).__name__])[0][:160]
