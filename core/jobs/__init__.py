"""Job specs and runners: what the CLI runs locally and the workers run for the platform."""
