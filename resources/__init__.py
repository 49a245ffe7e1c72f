"""Engines of crawl2ckpt: plain Python, usable and testable without Dagster."""
