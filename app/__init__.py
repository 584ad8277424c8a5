"""MobileViTv2 inference service."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("mobilevitv2-serve")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0+unknown"
