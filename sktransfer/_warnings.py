"""Point warnings at the caller's code, however deep inside we raise them."""

import inspect
import os

from ._compat import sklearn_fit_wrapper_file

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# sklearn's ``_fit_context`` wraps fit and partial_fit in a frame of its own.
_SKLEARN_BASE = sklearn_fit_wrapper_file()


def user_stacklevel():
    """``stacklevel`` for ``warnings.warn`` naming the first outside frame.

    Frames in this package and sklearn's fit wrapper are skipped, so a
    warning raised during ``clf.fit(...)`` points at that line of the
    user's code whichever private method raised it.
    """
    level = 1
    frame = inspect.currentframe().f_back  # the caller of warnings.warn
    while frame is not None:
        filename = os.path.abspath(frame.f_code.co_filename)
        if not (filename.startswith(_PACKAGE_DIR + os.sep)
                or filename == _SKLEARN_BASE):
            break
        level += 1
        frame = frame.f_back
    del frame  # frames reference each other; do not keep the cycle alive
    return level
