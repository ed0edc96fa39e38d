"""Layer 1: what the bytes mean. Nothing here reads files."""
from .checksum import fnv1a64
from .constants import (BUCKET_LEAF_FLAG, FREELIST_COUNT_SENTINEL, MAGIC, MAGIC_BE,
                        MAX_ELEMENTS, MAX_PAGE_SIZE, META1_PROBE_OFFSETS, MIN_PAGE_SIZE,
                        PGID_NO_FREELIST, VERSION, PageFlag)
from .layout import (BRANCH_ELEMENT, BUCKET_HEADER, BUCKET_HEADER_SIZE, ELEMENT_SIZE,
                     FREELIST_U64, LEAF_ELEMENT, META, META_CHECKSUMMED,
                     META_OFFSET, PAGE_HEADER, PAGE_HEADER_SIZE, Layout)
