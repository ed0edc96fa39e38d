"""Layer 3: the structural checker and the problem model shared by every checker."""
from .checker import CheckReport, check_file
from .problems import CATALOGUE, Problem, Severity
