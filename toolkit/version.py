"""The toolkit's version, in a module of its own: the package's ``__init__`` re-exports it, and modules
that record it (run records, adapter cards, the OpenAI endpoint's fingerprint) import it from here;
``versions()``, what a run record says it ran on."""

from __future__ import annotations

import contextlib
import platform
from importlib import metadata

__version__ = "0.1.0"


def versions() -> dict[str, str]:
    """The toolkit's, Python's and the engines' packages' versions (those installed)."""
    out = {"toolkit": __version__, "python": platform.python_version()}
    for pkg in ("torch", "transformers", "bitsandbytes", "openai"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out
