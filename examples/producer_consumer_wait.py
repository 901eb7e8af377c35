# The article's producer and consumer, with the consumer waiting for the
# producer's data instead of racing it: `txn(until=...)` sleeps (no polling,
# no lock held) until a commit makes the predicate true, then runs the body
# in that very snapshot.
import multiprocessing

from shmtxn import SharedMemory

READY = 10  # slot 10 says how many of slots 0..9 the producer has filled


def producer(shr):
    for i in range(10):
        with shr.txn() as shm:
            shm[i] = i * i
            shm[READY] = i + 1


def consumer(shr):
    with shr.txn(write=False, until=lambda shm: shm[READY] == 10,
                 timeout=30) as shm:
        print("consumer saw", shm[0:10])


if __name__ == "__main__":
    with SharedMemory(create=True, size=88) as shr:  # 11 slots
        c = multiprocessing.Process(target=consumer, args=(shr,))
        c.start()  # the consumer may well start first: it waits
        p = multiprocessing.Process(target=producer, args=(shr,))
        p.start()
        p.join()
        c.join()
