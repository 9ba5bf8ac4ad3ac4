"""Mixer kinds: one module each (see tfb.nn.kinds)."""
