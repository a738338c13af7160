"""Which optional install a missing module belongs to, so a command that needs it says so.

`pip install stemma-ml` gives every command that reads; training, evaluating and plotting
need the `build` extra (torch and the training stack). A command that imports one of those
without it ends with one line naming the extra, never a traceback.
"""

from __future__ import annotations

# top-level import name -> the extra that installs it
BUILD_MODULES = (
    "torch",
    "safetensors",
    "sklearn",
    "mlxtend",
    "scipy",
    "optuna",
    "matplotlib",
    "PIL",
)
EXTRAS: dict[str, str] = dict.fromkeys(BUILD_MODULES, "build")


def missing_extra(exc: ModuleNotFoundError) -> str | None:
    """The one-line message for a module that an extra installs; None for any other."""
    top = (exc.name or "").split(".")[0]
    extra = EXTRAS.get(top)
    if extra is None:
        return None
    return (
        f"this command needs {top}, which stemma's {extra!r} extra installs:"
        f" pip install 'stemma-ml[{extra}]'"
    )
