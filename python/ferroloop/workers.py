"""gunicorn worker classes that serve on ferroloop::

    gunicorn -k ferroloop.workers.UvicornWorker app:app
    gunicorn -k ferroloop.workers.UvicornH11Worker app:app   # pure-Python HTTP

They are uvicorn's own gunicorn workers (from the ``uvicorn-worker`` package
when it is installed, else ``uvicorn.workers``) with ferroloop as the loop.
Importing this module needs uvicorn.
"""

from __future__ import annotations

from typing import Any

try:
    from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]
except ImportError:
    try:
        from uvicorn.workers import UvicornWorker as _UvicornWorker
    except ImportError as error:
        raise ImportError("ferroloop.workers needs uvicorn: pip install uvicorn (and gunicorn)") from error

import uvicorn.config

# uvicorn 0.36 replaced loop "setups" (functions that install a policy,
# called with use_subprocess) with loop factories, which a loop given by
# import string is used as directly.
_LOOP = (
    "ferroloop:new_event_loop"
    if isinstance(getattr(uvicorn.config, "LOOP_FACTORIES", None), dict)
    else "ferroloop._takeover:uvicorn_loop_setup"
)


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """uvicorn's gunicorn worker, serving on ferroloop."""

    CONFIG_KWARGS: dict[str, Any] = {**_UvicornWorker.CONFIG_KWARGS, "loop": _LOOP}


class UvicornH11Worker(UvicornWorker):
    """The same with uvicorn's pure-Python h11 HTTP implementation."""

    CONFIG_KWARGS: dict[str, Any] = {**UvicornWorker.CONFIG_KWARGS, "http": "h11"}


__all__ = ["UvicornWorker", "UvicornH11Worker"]
