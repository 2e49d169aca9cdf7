"""nlpserve's serving side: FastAPI + ONNX Runtime over a model repository, with dynamic batching.

Never imports torch or model_src (the serving image does not carry them).
"""

__version__ = "0.1.0"
