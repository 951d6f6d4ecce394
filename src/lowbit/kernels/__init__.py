"""Kernels and the one selector that picks among them; every op ends in a plain-PyTorch reference path."""
