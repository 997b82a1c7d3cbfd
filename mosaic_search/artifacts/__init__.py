"""Torch-free ground: the artifact records (each beside its reader), the one writer, discovery and frames."""
