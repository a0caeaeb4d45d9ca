"""Click commands, one module per command family, loaded lazily by :mod:`kerasalex.cli`."""

from __future__ import annotations

import contextlib
from typing import Iterator

import click


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turns the library's user-facing errors into one-line ``ClickException``s."""
    from kerasalex.files import DiskFullError, ModelFileError

    try:
        yield
    except click.ClickException:
        raise
    except (ModelFileError, DiskFullError) as exc:
        raise click.ClickException(str(exc)) from None
    except (ValueError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise click.ClickException(msg) from None
