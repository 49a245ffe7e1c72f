"""Dagster assets: what each stage produces. The how lives in resources/."""
