"""boltkit: inspect, check and repair bbolt database files (BuildKit's cache.db and friends) from Python."""
__version__ = "0.1.0"
