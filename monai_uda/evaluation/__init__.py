from .metrics import METRIC_NAMES, case_metrics, summarize, write_case_metrics

__all__ = ["METRIC_NAMES", "case_metrics", "summarize", "write_case_metrics"]
