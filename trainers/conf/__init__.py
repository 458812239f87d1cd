"""Hydra configs of worldsdk-train (a package so that Hydra finds them when installed)."""
