"""medvlkit's version (the base layer: every module may read it)."""

__version__ = "0.1.0"
