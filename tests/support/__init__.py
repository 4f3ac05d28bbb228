"""Support code for the tests: the CPU fake of ``tensorrt``, independent transcriptions of upstream (the
oracle HART loop, the Infinity mirror) and hand-made test graphs. Not part of the installed package."""
