"""The one error an engine, the entrypoint rules and the grant raise for what a user caused or must fix."""


class EngineError(Exception):
    """A failure the user caused or must fix; the message is shown to them, so it names the path/export."""
