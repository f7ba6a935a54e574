"""Command line: `python -m tinygrad_gpu.check_twins [row ...]` compares GPU kernels with their twins.

The work is in tinygrad_gpu.twins (tg.check_twins is the function); this module is the entry point.
"""

import sys

from .twins import main

if __name__ == "__main__":
    sys.exit(main())
