"""The one error hierarchy of streamseg, and the exit codes the CLI maps it to.

Every error a user can see is a :class:`StreamsegError`. Each subclass also subclasses the builtin
that fits (as PyAV does with ``InvalidDataError(FFmpegError, ValueError)``), so callers that only
know Python's builtins still catch them sensibly.

Exit codes (``streamseg`` CLI):

=====  ==========================================================
0      success
1      a stage failed or a worker died (:class:`StageError`)
2      bad command line or config (:class:`ConfigError`)
3      bad input: missing, not a video, unreadable (:class:`InputError`)
4      the model could not be built or its weights not found (:class:`ModelError`)
5      bad output path or encoder failure (:class:`OutputError`)
130    interrupted (Ctrl-C / SIGTERM) before the run could finish cleanly
=====  ==========================================================
"""

from __future__ import annotations


class StreamsegError(Exception):
    """Base class of every error streamseg raises on purpose."""

    exit_code = 1
    restartable = False
    """Whether a new worker process may succeed where this one failed (the supervisor then replaces it)."""


class ConfigError(StreamsegError, ValueError):
    """A config file, ``--set`` override or command-line value is wrong."""

    exit_code = 2


class InputError(StreamsegError, ValueError):
    """The input is missing, is not a video, or cannot be read."""

    exit_code = 3


class ModelError(StreamsegError, RuntimeError):
    """A model name is unknown, or its weights are missing or do not fit it."""

    exit_code = 4


class OutputError(StreamsegError, OSError):
    """An output cannot be written (bad path, encoder refused the settings)."""

    exit_code = 5


class DeviceError(StreamsegError, RuntimeError):
    """The GPU failed (a CUDA error, out of memory): a new worker process on a fresh CUDA context may
    succeed, so the supervisor replaces the worker instead of failing the run."""

    restartable = True


class MessageError(StreamsegError, ValueError):
    """A message received on a socket is malformed; the receiver rejects it and carries on."""


class StageError(StreamsegError, RuntimeError):
    """A pipeline stage failed; ``stage`` names it and ``cause`` says why.

    ``exit_code`` is taken from the error the stage raised when it was a :class:`StreamsegError`
    (an unreadable input stays exit code 3 even though the decode worker reported it).
    """

    def __init__(self, stage: str, cause: str, exit_code: int = 1) -> None:
        super().__init__(f"{stage}: {cause}")
        self.stage = stage
        self.cause = cause
        self.exit_code = exit_code


class Interrupted(StreamsegError, KeyboardInterrupt):
    """The run was stopped by Ctrl-C or SIGTERM before it finished."""

    exit_code = 130


_BY_NAME = {cls.__name__: cls for cls in (StreamsegError, ConfigError, InputError, ModelError,
                                          OutputError, DeviceError, MessageError, StageError, Interrupted)}


def exit_code_for(error_type: str) -> int:
    """The exit code for an error class name reported by a worker (1 when unknown)."""
    cls = _BY_NAME.get(error_type)
    return cls.exit_code if cls is not None and cls is not StageError else 1
