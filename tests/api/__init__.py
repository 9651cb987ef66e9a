"""Tests of api/ below HTTP: answer schemas, micro-batching."""
