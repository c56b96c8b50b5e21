"""The toolkit's version, in a module of its own: the package's ``__init__`` re-exports it, and modules
that record it (run records, adapter cards, the OpenAI endpoint's fingerprint) import it from here."""

__version__ = "0.1.0"
