"""Workers of a multiprocessing.Pool fill rows of one shared array, each
inside a write transaction; the parent checks the result.

    python examples/pool_fill_rows.py
"""
import multiprocessing

import numpy as np

from shmtxn import SharedMemory

ROWS, COLS = 64, 1000


def fill(args):
    shr, row = args
    with shr.txn() as t:               # only this row is logged for undo
        t.ndarray(row, row + 1)[:] = np.sqrt(np.arange(COLS) + row)
    return row


if __name__ == "__main__":
    with SharedMemory(create=True, shape=(ROWS, COLS), format="float64") as shr:
        with multiprocessing.Pool(4) as pool:
            pool.map(fill, [(shr, row) for row in range(ROWS)])
        with shr.txn(write=False) as t:
            result = t.ndarray()
            expected = np.sqrt(np.arange(COLS) + np.arange(ROWS)[:, None])
            assert np.array_equal(result, expected)
            print(f"{ROWS} rows of {COLS} filled by 4 workers: "
                  f"sum = {result.sum():.3f}, verified")
            del result
