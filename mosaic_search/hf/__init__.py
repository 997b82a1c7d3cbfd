"""Hugging Face plumbing: model resolution, surgery, assembly of plans in memory, data, device, torchrun."""
