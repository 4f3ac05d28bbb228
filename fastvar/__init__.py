"""fastvar-trt: FastVAR-accelerated visual autoregressive models compiled for deployment.

Sub-packages map onto the repository's top-level folders, which follow the pipeline:
``fastvar.export`` (models, schedules, graphs), ``fastvar.runtime`` (the chain loop and backends),
``fastvar.plugins`` (the FastVARRestore op).
"""

__version__ = "0.1.0"
