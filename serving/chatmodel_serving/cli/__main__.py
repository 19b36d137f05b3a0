"""`python -m chatmodel_serving.cli ...`: the same as the `chatmodel` console script."""

import sys

from chatmodel_serving.cli import main

sys.exit(main())
