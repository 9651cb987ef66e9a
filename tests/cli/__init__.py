"""Tests of cli/: the fitcycle command, run as a user runs it."""
