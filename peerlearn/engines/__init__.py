"""Engines own the round loop: the batched simulator here, the distributed engine later."""
