"""The translator: a Transformer encoder-decoder (and a GRU-with-attention baseline) for
Multi30k English->German, trained from scratch with a joint BPE vocabulary.

Modules, in dependency order:
    tokenizer    joint BPE vocabulary (`tokenizers`), special ids
    data         parallel text readers and length-bucketed token-budget batches
    transformer  the Transformer and its tensor-only, exportable decoder step
    rnn          the GRU + dot-product attention baseline, same decoding API
    decoding     greedy and beam search, cached (incremental) and uncached
    checkpoint   save/load a translator checkpoint directory
    train        `python -m model_src train translator`
    evaluate     `python -m model_src evaluate translator`
"""
