"""accelopt: convert, optimize, validate and lower models from one YAML recipe."""

__version__ = "0.1.0"
