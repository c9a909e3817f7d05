"""What the local server does after a request fails: it tells the client about its own
failures with a generic message and a request id, never the exception's text (which may name
memory sizes, paths or code), the text going to the server's log, one line under that id, the
traceback at DEBUG level; and it gives back to the system the memory such a request freed.
"""

import ctypes
import functools
import logging
import uuid

logger = logging.getLogger("tfprobunet.serving")

# The most characters of an exception's text the log line keeps.
LOGGED_CHARS = 1000


def internal_error(what, error):
    """Log `error` (an exception that is not a `ServingError`) raised answering `what` (e.g.
    `"a gRPC PredictRequest"`) as one line with a new request id; returns `(request_id,
    message)`, the message for the client: it names the id, not the error."""
    request_id = uuid.uuid4().hex[:16]
    text = " ".join(f"{type(error).__name__}: {error}".split())
    if len(text) > LOGGED_CHARS:
        text = f"{text[:LOGGED_CHARS]}..."
    logger.error("Internal error answering %s (request id %s): %s", what, request_id, text)
    logger.debug("Traceback of request id %s", request_id, exc_info=error)
    return request_id, (f"Internal error (request id {request_id}): the server could not answer "
                        "this request; its log names the cause under this id.")


def release_freed_memory():
    """Give the memory the heap holds free back to the system (glibc's `malloc_trim`; nothing
    where there is none). What a refused or failed request allocated and freed (a 63 MB message
    received, a computation that ran out of memory) would otherwise stay in the server's
    resident memory, kept for reuse: +27 % after 20 refused 63 MB requests."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim():
    try:
        return ctypes.CDLL(None).malloc_trim  # the process's own C library
    except (OSError, AttributeError):
        return None
