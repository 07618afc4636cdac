"""The one-line error with which the plugin stops fairseq on a flag it cannot work with."""


class SageFlagError(SystemExit):
    """A SAGE flag with a value that cannot work: fairseq-train stops with this one line."""

    def __init__(self, message: str):
        super().__init__(f"fairseq-sage: error: {message}")
