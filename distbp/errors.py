"""The one base class of distbp's errors. Each error carries the exit code the command-line
tools end with, and whether every process of a job raises it together (``collective``): a
collective error is reported once, by rank 0; any other error on one rank ends the whole job
at once, since its peers would otherwise wait for it in the next collective forever (see
docs/ARCHITECTURE.md, "Clear failure"). Imports nothing, so every layer may use it."""

from __future__ import annotations

EXIT_OK, EXIT_RUN_ERROR, EXIT_USAGE = 0, 1, 2


class DistbpError(Exception):
    """Base class: ``exit_code`` for the CLI, ``collective`` if all ranks raise it together."""

    exit_code: int = EXIT_RUN_ERROR
    collective: bool = False
