"""scalerec: Neural Collaborative Filtering from proof of concept to production scale."""

__version__ = "0.1.0"
