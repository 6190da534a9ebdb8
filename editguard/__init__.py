"""editguard: decide whether an image edit is unsafe from the whole triple."""

__version__ = "0.1.0"
