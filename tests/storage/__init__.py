"""Tests of core/storage/."""
