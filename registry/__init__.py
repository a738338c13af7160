"""The registry library: records, files, consistency checks, history and queries.

Importing it never imports torch or dvc, so read-only commands stay fast.
"""

from .errors import StemmaError
from .records import DatasetSpec, Manifest, ModelSpec, Settings, SourceRef
from .registry import Registry

__all__ = [
    "DatasetSpec",
    "Manifest",
    "ModelSpec",
    "Registry",
    "Settings",
    "SourceRef",
    "StemmaError",
]

__version__ = "0.1.0"
