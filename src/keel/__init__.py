"""Keel: a production FastAPI backend that runs on one command and scales out."""

__version__ = "0.1.0"
