"""Tests of core/db/ and migrations/."""
