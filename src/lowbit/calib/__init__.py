"""Calibration: architecture tables, calibration text, and collecting statistics from a model's layers."""
