"""lineaged: passive, exact data and model lineage for ML teams."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
