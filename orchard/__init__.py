"""Shared core of the orchard system: the contract every service obeys."""

__version__ = "0.1.0"
