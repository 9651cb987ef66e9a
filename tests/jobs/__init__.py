"""Tests of core/jobs/: job kinds, the runner, the gate, rates, the cleaner, distributed fits."""
