"""Hydra configs (a package so that Hydra finds them from the console scripts)."""
