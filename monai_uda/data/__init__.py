from .datalist import (
    ALL_KEYS,
    LABELLED_KEYS,
    DatalistError,
    load_uda_datalist,
    read_array,
    target_training_images,
    validate_uda_datalist,
    write_uda_datalist,
)
from .demo import ensure_demo_datalist, make_demo_pair
from .pairs import PAIRS, build_pair_datalist, default_data_root
from .uda_data import UDAData

__all__ = [
    "ALL_KEYS",
    "LABELLED_KEYS",
    "DatalistError",
    "PAIRS",
    "UDAData",
    "build_pair_datalist",
    "default_data_root",
    "ensure_demo_datalist",
    "load_uda_datalist",
    "make_demo_pair",
    "read_array",
    "target_training_images",
    "validate_uda_datalist",
    "write_uda_datalist",
]
