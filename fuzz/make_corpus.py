"""Write the fuzzer's seed corpus: the base images of tests/fuzz_images.py
(real segments in every layout and state: clean, a writer or reader killed
mid-txn, killed at the engine's crash points, a creator killed before
publishing), one file per state, into fuzz/corpus/.

Run it with the project's interpreter after installing shmtxn:
    .venv/bin/python fuzz/make_corpus.py
The images are the same bytes on every run (pids, times and the dict's
hash key are fixed), so re-running it changes nothing unless the format
or the states did.
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "tests"))

import fuzz_images  # noqa: E402


def main():
    out = os.path.join(HERE, "corpus")
    os.makedirs(out, exist_ok=True)
    for kind, image in fuzz_images.build_bases().items():
        with open(os.path.join(out, kind), "wb") as f:
            f.write(image)
        print(f"{kind}: {len(image)} bytes")


if __name__ == "__main__":
    main()
