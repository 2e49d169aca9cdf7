"""`python -m model_src ...`: train, pretrain, evaluate, tokenizer and sample-data commands."""

import sys

from model_src.cli import main

sys.exit(main())
