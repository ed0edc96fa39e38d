"""Layer 2: reading a file read-only: metas, pages, freelist, the bucket tree."""
from .database import Database
from .freelist import Freelist, read_freelist
from .meta import Meta, MetaChoice, decode_meta, discover
from .pages import Node, Pager
from .plain import plain_tree
from .source import Source
from .tree import Bucket, Item, Tree

__all__ = ["Database", "Freelist", "read_freelist", "Meta", "MetaChoice", "decode_meta", "discover", "Node", "Pager",
           "plain_tree", "Source", "Bucket", "Item", "Tree"]
