"""pacsmig: lossless migration of a legacy PACS to a vendor-neutral archive."""

__version__ = "0.1.0"
