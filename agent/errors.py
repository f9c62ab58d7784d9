"""One exception root for the agent.

Each leaf also inherits the matching built-in (as gpiozero's exc.py does) so callers can catch
either. Messages are written for the technician who reads them: say what is wrong and what to do.
Third-party errors (paho, sqlite3, av, OSError) are translated into these at the module boundary.
"""

from collections.abc import Sequence


class AgentError(Exception):
    """Root of every error the agent raises on purpose."""


class ConfigError(AgentError, ValueError):
    """The configuration file is invalid; ``problems`` lists every finding, not just the first."""

    def __init__(self, problems: "Sequence[object]") -> None:
        self.problems = problems
        super().__init__("\n".join(str(p) for p in problems))


class OutboxError(AgentError, OSError):
    """The durable outbox could not be opened or written."""


class CameraError(AgentError, IOError):
    """A camera source could not be opened or read."""


class ControlError(AgentError, ConnectionError):
    """The local control socket of the running daemon could not be reached."""


class ProtocolError(AgentError, ValueError):
    """A message on the wire does not follow docs/protocol.md."""


class StoreError(AgentError, OSError):
    """The segment store could not write or index video; the message says what to do."""
