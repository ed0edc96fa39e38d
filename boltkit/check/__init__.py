"""Layer 3: the structural checker and the problem model shared by every checker."""
from .checker import CheckReport, TreeCounts, check_file, count_tree
from .problems import CATALOGUE, Problem, Severity

__all__ = ["CheckReport", "TreeCounts", "check_file", "count_tree", "CATALOGUE", "Problem", "Severity"]
