"""What this build of CLLM is: its version (the installed package's) and the Python running it."""

import platform
from importlib import metadata


def version() -> str:
    try:
        return metadata.version("cllm")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def python_version() -> str:
    return platform.python_version()
