"""``python -m bnpdeep ...`` (and ``torchrun ... -m bnpdeep fit ...``): the command line."""

import sys

from bnpdeep.cli import main

sys.exit(main())
