"""HTTP routers: one per task plus models, the Open Inference Protocol, health and metrics."""
