"""torch -> ONNX: the bridge between model_src checkpoints and the service's model repository.

Modules, in pipeline order:
    torchscript       the one torch.onnx.export call (TorchScript exporter, opset 17)
    classifier_graph  classifier/NLI: load, eager attention, trace
    translator        translator: encoder.onnx + decoder.onnx (K/V cache), parity, export job
    optimize          ONNX Runtime transformer optimizer (fusions), fp16 conversion
    quantize          dynamic int8 with settings chosen by measured accuracy
    parity            reference logits, comparisons, ParityError
    publish           staging directory -> <repository>/<name>/<version>, all or nothing
    provenance        git commit, export command, training record, dev scores for the manifest
    classifier        the classifier/NLI export job
    bench*, roofline  `python -m export bench`
    samples, tiny     bundled parity sentences; small checkpoints for tests and --quick
    release           `python -m export release|unpack`: the repository as one verified archive
    model_card        MODEL_CARD.md of each released model
"""
