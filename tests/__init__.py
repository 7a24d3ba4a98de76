"""diffblocks test suite (a package so that ``tests.fixtures`` is importable by tests and the CLI demo)."""
