import os
import sys

# tests/ helpers (cases.py, spec_bruteforce.py) are plain modules next to the tests.
sys.path.insert(0, os.path.dirname(__file__))
