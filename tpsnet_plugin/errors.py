"""The base of the errors a user can fix: the command-line tools print them as one line.

Every such error of the package derives from :class:`TPSNetError` as well as from the built-in
type it always had (``ValueError``, ``RuntimeError``, ``OSError``), so code that caught the
built-in type keeps working.
"""

from __future__ import annotations

import os
import pickle
import pickletools
import re


class TPSNetError(Exception):
    """An error in the user's input, files or environment, with a message naming the fix.

    Attributes:
        option: The config option whose value caused the error (e.g. ``"model.clip_pretrained"``),
            when there is one; the command line then says where that value was set.
    """

    option: str | None = None

    def __init__(self, *args, option: str | None = None) -> None:
        super().__init__(*args)
        if option is not None:
            self.option = option


class ConfigError(TPSNetError, ValueError):
    """A config value, option or command-line flag is invalid; the message names it and what it accepts."""


class ConfigKeyError(ConfigError, KeyError):
    """An unknown config key; the message lists the closest valid ones."""

    __str__ = BaseException.__str__  # the message as written, not KeyError's quoted repr


class DataError(TPSNetError, ValueError):
    """The data cannot be used as given (layout, classes, sizes, files); the message names the fix."""


class WeightsFileError(TPSNetError, ValueError, RuntimeError):
    """A weights file that cannot be loaded safely: damaged, of another model, or holding pickled code.

    Both a ``ValueError`` and a ``RuntimeError``: the CLIP loader raised the first, the backbone loader the second.
    """


class WeightsDownloadError(TPSNetError, RuntimeError):
    """Pretrained weights named by a tag could not be fetched (no network, or offline mode)."""


def describe_unsafe_pickle(error: BaseException, path: str | os.PathLike | None = None) -> str | None:
    """The Python global a refused pickle asks for (e.g. ``posix.system``), or None for any other
    error (a damaged file).

    Read from torch's ``weights_only`` refusal, else (torch names no global for pickle protocol 4)
    from the opcodes of the plain pickle at ``path``; nothing in the file runs.
    """
    found = re.search(r"(?:GLOBAL |Unsupported globals?: )([\w.]*\w)", str(error))
    if found:
        return found.group(1)
    return _pickled_global(path) if path is not None and isinstance(error, pickle.UnpicklingError) else None


def _pickled_global(path: str | os.PathLike) -> str | None:
    """The first Python global a plain pickle file names, read from its opcodes; else None."""
    strings: list[str] = []
    try:
        with open(path, "rb") as file:
            for opcode, argument, _ in pickletools.genops(file):
                if opcode.name == "GLOBAL":
                    return str(argument).replace(" ", ".")
                if opcode.name == "STACK_GLOBAL" and len(strings) >= 2:
                    return f"{strings[-2]}.{strings[-1]}"
                if isinstance(argument, str):
                    strings.append(argument)
    except Exception:  # noqa: BLE001 - not a readable plain pickle (a zip checkpoint, damaged): no global
        return None
    return None


def first_line(error: BaseException) -> str:
    """The first line of an error's message (its type name when empty), for one-line messages."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
