"""Helpers that bundle configs call: where a bundle lives, how to run one from Python."""

from .. import distributed  # monai_uda.distributed (torch-only, cheap to import), exposed for the configs
from .checkpoint import SelectionState, latest_checkpoint, resume_from
from .inference import output_ext, report_outputs
from .locate import bundle_dir, bundles_root, locate_bundle_root
from .precise_bn import precise_bn
from .run import run_bundle
from .stages import (
    DEMO_SOURCE_BUDGET,
    check_source_checkpoint,
    clear_model_card,
    ensure_stage,
    evaluated_checkpoint,
    load_network,
    resolve_source_checkpoint,
    save_network,
    write_model_card,
)
from .tracking import log_to_trackers
from .validator_scores import record_validator_scores, validator_scores_path

__all__ = ["distributed", "latest_checkpoint", "resume_from", "SelectionState", "bundle_dir", "bundles_root", "locate_bundle_root", "run_bundle", "ensure_stage", "evaluated_checkpoint", "resolve_source_checkpoint", "DEMO_SOURCE_BUDGET", "load_network", "save_network", "write_model_card", "clear_model_card", "check_source_checkpoint", "precise_bn",
           "log_to_trackers", "output_ext", "report_outputs", "record_validator_scores", "validator_scores_path"]
