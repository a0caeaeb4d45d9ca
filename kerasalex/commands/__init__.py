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
    except Exception as exc:
        # A damaged decode cache met inside tf.data reaches us wrapped in
        # TensorFlow's error: say our one line.
        import sys

        cache = sys.modules.get("kerasalex.data.cache")
        err = cache.raised_by_a_read(exc) if cache is not None else None
        if err is None:
            raise
        raise click.ClickException(str(err)) from None
