"""Domain errors of the core. Each says what went wrong and what to do; the CLI prints it as one
line and the HTTP layer maps it to an OpenAI-shaped error in one place."""

from __future__ import annotations


class ImpetusError(Exception):
    """Base of every error the product reports to a user."""
