"""Benchmarks: per-step training cost, metric speed and agreement against Quantus/Captum, int8 deployment."""
