"""`nlpserve`: one command over the project's modules (the `python -m` forms keep working)."""
