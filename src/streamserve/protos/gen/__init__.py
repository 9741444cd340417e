"""Generated code; see regenerate.py."""
