"""Code that makes the test fixtures: damaged copies of valid files (and, via the oracle, the files themselves)."""
