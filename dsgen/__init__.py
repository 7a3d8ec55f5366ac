"""dsgen: build, validate and publish datasets for emergent-misalignment research."""

__version__ = "0.1.0"
