"""Constants of the bbolt format (magic, flags, sentinels, limits)."""
from __future__ import annotations

import enum

MAGIC = 0xED0CDAED
MAGIC_BE = MAGIC.to_bytes(4, "big")
VERSION = 2

PGID_NO_FREELIST = 0xFFFFFFFFFFFFFFFF
FREELIST_COUNT_SENTINEL = 0xFFFF   # count field value meaning "the real count is the first u64"
MAX_ELEMENTS = 0xFFFF              # bbolt never writes a page with this many elements

MIN_PAGE_SIZE = 512
MAX_PAGE_SIZE = 16 << 20           # bbolt probes meta 1 up to 16 MiB
META1_PROBE_OFFSETS = tuple(1024 << i for i in range(15))

MAX_KEY_SIZE = 32768
MAX_VALUE_SIZE = (1 << 31) - 2
MIN_KEYS_PER_PAGE = 2


class PageFlag(enum.IntEnum):
    BRANCH = 0x01
    LEAF = 0x02
    META = 0x04
    FREELIST = 0x10

    @classmethod
    def name_of(cls, flags: int) -> str:
        """The page type as `bbolt pages` prints it (exact-equality semantics of bbolt >= 1.3.7)."""
        try:
            return cls(flags).name.lower()
        except ValueError:
            return f"unknown<{flags:02x}>"


BUCKET_LEAF_FLAG = 0x01
