"""The errors of the runtime that are not about one request: a package it cannot use, a backend it cannot run.
Request errors (GenerationError) are in engines/request.py."""


class PackageError(ValueError):
    """A model package is missing, unreadable, of an unknown version or does not match its hashes."""


class BackendError(RuntimeError):
    """A backend cannot be created or run (missing library, no GPU, wrong inputs). The message says what to do."""
