import sys

from .cli import main

if __name__ == "__main__":  # not when imported (stubtest does)
    sys.exit(main())
