"""peerlearn: decentralized machine learning, from a batched simulator to real processes.

All node models of a run live in one flat tensor ``params_NP`` (N nodes x P parameters).
See ``../shared/ARCHITECTURE.md`` (mirrored in ``docs/architecture.md``) for the shape of the code.
"""

__version__ = "0.1.0"
