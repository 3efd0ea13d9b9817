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


class OutputError(GeosegError, OSError):
    """An output folder cannot be made or written to.

    A path through a file, no permission, a full disk, a quota or a file size limit; nothing
    half-written is left in the folder, and earlier outputs stay as they were.
    """


class ClusterLostError(GeosegError):
    """The Dask scheduler of a run went away mid-run: not the user's input, but theirs to fix.

    No output was replaced, and the blocks finished are kept in the resume cache for the next
    run. The command line exits with its own status (69, "service unavailable") for it.
    """


class SeriesBusyError(GeosegError):
    """Another ``geoseg monitor`` is updating the same series: try again once it is done.

    The command line exits with its own status (75, "try again later") for it.
    """


def yaml_error(path: object, exc: Exception) -> ConfigError:
    """The one-line :class:`ConfigError` for a file that is not valid YAML (or not text).

    It names the line and column where the parser stopped (counted from 1, as editors count)
    and what it expected, in place of PyYAML's multi-line report with its source excerpt.
    """
    mark = getattr(exc, "problem_mark", None)
    if isinstance(exc, UnicodeDecodeError):
        return ConfigError(
            f"{path}: not valid YAML: not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
            f"offset {exc.start})"
        )
    if mark is None:
        return ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}")
    where = f"{path}, line {mark.line + 1}, column {mark.column + 1}"
    problem = getattr(exc, "problem", None) or "cannot parse"
    context, start = getattr(exc, "context", None), getattr(exc, "context_mark", None)
    opened = f" ({context}, opened on line {start.line + 1})" if context and start else ""
    return ConfigError(f"{where}: not valid YAML: {problem}{opened}")
