"""Compressors over message rows, each an ``(init, update)`` pair that counts its encoded bytes."""

from peerlearn.compressors.base import COMPRESSORS, Compressor, CompressorSpec
from peerlearn.compressors.error_feedback import error_feedback
from peerlearn.compressors.quantize import fp16, identity, int8, qsgd, sign  # noqa: I001 (registry order)
from peerlearn.compressors.sparsify import random_k, top_k

__all__ = ["COMPRESSORS", "Compressor", "CompressorSpec", "error_feedback", "fp16", "identity", "int8", "qsgd", "random_k", "sign", "top_k"]
