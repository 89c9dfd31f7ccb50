"""Compressors over message rows, each an ``(init, update)`` pair that counts its encoded bytes."""

from peerlearn.compressors.base import Compressor
from peerlearn.compressors.error_feedback import error_feedback
from peerlearn.compressors.quantize import fp16, identity, int8, qsgd, sign
from peerlearn.compressors.sparsify import random_k, top_k

__all__ = ["Compressor", "error_feedback", "fp16", "identity", "int8", "qsgd", "random_k", "sign", "top_k"]
