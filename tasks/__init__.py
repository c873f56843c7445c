"""Thin Prefect tasks over the deepfake library: retries, cache policy, logging, artifacts."""
