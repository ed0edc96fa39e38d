"""Layer 6: BuildKit's stores: decoders, the cache-key graph, semantic checks."""
from .cachecheck import check_cache_store
from .cachedb import CacheStore, decode_link_key, load_cache_store
