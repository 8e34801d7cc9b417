"""spmctl's version, in a module of its own: the CLI and plugins read it without importing the
package's public API (`spmctl/__init__.py` re-exports it with the API)."""

__version__ = "0.1.0"
