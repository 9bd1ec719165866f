"""cargohold: bake container images into node images, fetched compressed or fully pulled."""

__version__ = "0.1.0"
