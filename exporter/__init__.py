"""mail-continuity-exporter: Prometheus exporter for mail availability and continuity."""

__all__ = ["__version__"]

__version__ = "0.1.0"
