"""``python -m fgdkern.train``: see docs/training.md."""
import sys

from fgdkern.train import main

if __name__ == "__main__":
    sys.exit(main())
