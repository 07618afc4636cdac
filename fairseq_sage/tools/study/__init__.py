"""fairseq-sage-study: an optimizer study (grid, seeds, statistics, report) from one TOML file."""
