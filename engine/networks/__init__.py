"""Torch nn.Modules of the engine (imported lazily: they pull in torch)."""
