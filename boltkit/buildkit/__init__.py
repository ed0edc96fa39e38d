"""Layer 6: BuildKit's stores: decoders, the cache-key graph, semantic checks."""
from . import codes  # noqa: F401  (registers the C, D, M, H and X codes before any check runs)
from .cachecheck import check_cache_columns, check_cache_db
from .cachecolumns import CacheColumns, load_cache_columns, load_cache_store
from .cachedb import CacheStore, decode_link_key

__all__ = ["check_cache_columns", "check_cache_db", "CacheColumns", "load_cache_columns", "load_cache_store",
           "CacheStore", "decode_link_key"]
