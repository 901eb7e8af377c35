"""shmtxn: transactional shared memory for Python processes.

    from shmtxn import SharedMemory
    with SharedMemory(create=True, size=80) as shr:
        with shr.txn() as shm:
            shm[0] = 42
"""

from . import errors
from .errors import *  # noqa: F401,F403  (the exception hierarchy)
from .admin import list_segments, segment_info
from .memory import SharedMemory

__version__ = "0.1.0"

__all__ = ["SharedMemory", "list_segments", "segment_info", "__version__",
           *errors.__all__]
