"""Turning requests into tensors and back (codec), scheduling them (batcher), running them."""
