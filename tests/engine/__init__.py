"""Tests of core/engine/: the training engine and its tasks, no server."""
