"""The examples of the stdlib's multiprocessing.shared_memory documentation
(Python 3.13), run with only the import changed: ``from multiprocessing
import shared_memory`` becomes ``import shmtxn as shared_memory``.  The
ShareableList and SharedMemoryManager examples are about classes shmtxn
does not replace, and are left out.  Interactive-session output is kept
as asserts."""

import multiprocessing
import subprocess
import sys


def test_basic_example():
    import shmtxn as shared_memory
    shm_a = shared_memory.SharedMemory(create=True, size=10)
    assert type(shm_a.buf) is memoryview
    buffer = shm_a.buf
    assert len(buffer) == 10
    buffer[:4] = bytearray([22, 33, 44, 55])  # Modify multiple at once
    buffer[4] = 100                           # Modify single byte at a time
    # Attach to an existing shared memory block
    shm_b = shared_memory.SharedMemory(shm_a.name)
    import array
    assert array.array('b', shm_b.buf[:5]) == array.array(
        'b', [22, 33, 44, 55, 100])  # Copy the data into a new array.array
    shm_b.buf[:5] = b'howdy'  # Modify via shm_b using bytes
    assert bytes(shm_a.buf[:5]) == b'howdy'  # Access via shm_a
    shm_b.close()   # Close each SharedMemory instance
    shm_a.close()
    shm_a.unlink()  # Call unlink only once to release the shared memory


SECOND_SHELL = """
import sys
name = sys.argv[1]
import numpy as np
import shmtxn as shared_memory
# Attach to the existing shared memory block
existing_shm = shared_memory.SharedMemory(name=name)
# Note that a.shape is (6,) and a.dtype is np.int64 in this example
c = np.ndarray((6,), dtype=np.int64, buffer=existing_shm.buf)
assert c.tolist() == [1, 1, 2, 3, 5, 8]
c[-1] = 888
assert c.tolist() == [1, 1, 2, 3, 5, 888]
# Clean up from within the second Python shell
del c  # Unnecessary; merely emphasizing the array is no longer used
existing_shm.close()
"""


def test_numpy_example_across_two_interpreters():
    import pytest
    pytest.importorskip("numpy")
    # In the first Python interactive shell
    import numpy as np
    a = np.array([1, 1, 2, 3, 5, 8])  # Start with an existing NumPy array
    import shmtxn as shared_memory
    shm = shared_memory.SharedMemory(create=True, size=a.nbytes)
    # Now create a NumPy array backed by shared memory
    b = np.ndarray(a.shape, dtype=a.dtype, buffer=shm.buf)
    b[:] = a[:]  # Copy the original data into shared memory
    assert b.tolist() == [1, 1, 2, 3, 5, 8]
    assert type(b) is np.ndarray and type(a) is np.ndarray
    assert shm.name  # We did not specify a name so one was chosen for us
    # In either the same shell or a new Python shell on the same machine
    subprocess.run([sys.executable, "-c", SECOND_SHELL, shm.name],
                   check=True, timeout=60)
    # Back in the first Python interactive shell, b reflects this change
    assert b.tolist() == [1, 1, 2, 3, 5, 888]
    # Clean up from within the first Python shell
    del b  # Unnecessary; merely emphasizing the array is no longer used
    shm.close()
    shm.unlink()  # Free and release the shared memory block at the very end


def test_numpy_example_in_one_process_with_two_handles():
    import pytest
    np = pytest.importorskip("numpy")
    import shmtxn as shared_memory
    a = np.array([1, 1, 2, 3, 5, 8])
    shm = shared_memory.SharedMemory(create=True, size=a.nbytes)
    b = np.ndarray(a.shape, dtype=a.dtype, buffer=shm.buf)
    b[:] = a[:]
    existing_shm = shared_memory.SharedMemory(name=shm.name)
    c = np.ndarray((6,), dtype=np.int64, buffer=existing_shm.buf)
    c[-1] = 888
    assert b.tolist() == [1, 1, 2, 3, 5, 888]
    del c
    existing_shm.close()
    del b
    shm.close()
    shm.unlink()


def _child_attaches(name, conn):
    import shmtxn as shared_memory
    shm = shared_memory.SharedMemory(name)
    shm.buf[0] = 99
    shm.close()
    conn.send("done")


def test_the_3_13_signature_with_track():
    """SharedMemory(name=None, create=False, size=0, *, track=True)."""
    import shmtxn as shared_memory
    shm = shared_memory.SharedMemory(None, True, 10, track=False)
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child_attaches, args=(shm.name, child))
    p.start()
    assert parent.recv() == "done"
    p.join()
    assert shm.buf[0] == 99
    shm.close()
    shm.unlink()
