"""The error types geoseg raises for problems a user can fix.

Every such error derives from :class:`GeosegError`; its message names the input, the problem
and the fix, in one line, because the CLI prints it as ``error: <message>`` and exits 2.
Assertions remain for our own invariants and are never raised for user input.
"""


class GeosegError(Exception):
    """Root of every error caused by input a user can correct."""


class ConfigError(GeosegError, ValueError):
    """A catalog or workflow file is malformed or inconsistent."""


class SceneError(GeosegError, OSError):
    """A scene's files are missing, unreadable or do not fit together."""


class ModelError(GeosegError, ValueError):
    """A model cannot be built or does not fit the scene it is asked to run on."""


class UnusableSceneError(SceneError):
    """A scene reads fine but cannot give an answer: mostly cloud, or no change to show.

    Batch and monitoring runs record such a scene as unusable and go on with the others.
    ``masked`` holds the shares of its pixels masked as ``cloud``, ``cloud_shadow`` and in
    ``total``, when clouds are the reason.
    """

    def __init__(self, message: str, masked: dict[str, float] | None = None) -> None:
        super().__init__(message)
        self.masked = dict(masked or {})


class SeriesBusyError(GeosegError):
    """Another ``geoseg monitor`` is updating the same series: try again once it is done.

    The command line exits with its own status (75, "try again later") for it.
    """
