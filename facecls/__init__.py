"""facecls: from a messy scrape of a few people's photos to a face classifier."""

__version__ = "0.1.0"
