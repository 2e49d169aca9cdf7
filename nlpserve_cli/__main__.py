"""`python -m nlpserve_cli ...` is the `nlpserve` console script."""

import sys

from nlpserve_cli.main import main

sys.exit(main())
