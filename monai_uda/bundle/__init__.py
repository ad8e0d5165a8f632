"""Helpers that bundle configs call: where a bundle lives, how to run one from Python."""

from .checkpoint import latest_checkpoint, resume_from
from .locate import bundle_dir, bundles_root, locate_bundle_root
from .run import run_bundle
from .source import ensure_source_checkpoint, load_network, save_network

__all__ = ["latest_checkpoint", "resume_from", "bundle_dir", "bundles_root", "locate_bundle_root", "run_bundle", "ensure_source_checkpoint", "load_network", "save_network"]
