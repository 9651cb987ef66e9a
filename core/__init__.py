"""fitcycle: train, serve and retrain image models the fast.ai way."""

__version__ = "0.1.0"
