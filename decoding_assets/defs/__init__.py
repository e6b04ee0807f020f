"""The Dagster layer: definitions grouped by domain, assembled in ``definitions.py``."""
