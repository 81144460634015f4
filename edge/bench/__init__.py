"""`edge bench`: latency and throughput of the whole device pipeline, comparable across devices.

Stages of one frame, timed with `time.perf_counter` in this order (docs/bench.md):

- ``capture``     getting the next frame from the source (sim: a pre-rendered field; replay: read + decode
                  a file; camera: `VideoCapture.read`).
- ``preprocess``  `edge.preprocess.preprocess` (the one preprocessing) + copying the tensor into the
                  model input.
- ``invoke``      the interpreter's `invoke()` alone: the number TFLite's benchmark_model and pycoral report.
- ``postprocess`` reading the output tensor, dequantizing, label / top-k / uncertain flag.
- ``end_to_end``  one clock around all four, frame after frame, serially (so it includes the loop's own
                  overhead and is never just the sum of the parts). Same definition on every device.

``overhead_ratio`` = end_to_end p50 / invoke p50: what the pipeline costs on top of the model.
"""

STAGES = ("capture", "preprocess", "invoke", "postprocess", "end_to_end")
