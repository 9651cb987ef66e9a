"""The `fitcycle` command."""
