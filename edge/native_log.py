"""Native libraries (LiteRT, TensorFlow) write their own log lines straight to file descriptor 2,
where Python's logging cannot reach them. `held_stderr` holds that descriptor while such a library
starts, then passes on the lines a user should see and drops the rest."""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile

# LiteRT's line on every interpreter start; it has no switch.
LITERT_NOISE = re.compile(rb"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$")
# TensorFlow's start-up and converter chatter: absl INFO/WARNING lines, the notes logged before absl
# is initialised, CUDA probing on a CPU host, the converter's settings line.
TENSORFLOW_NOISE = re.compile(
    rb"^([IW]\d{4} |WARNING: All log messages before absl::InitializeLog|To enable the following instructions"
    rb"|fully_quantize: |E\d{4} .*(cuInit|cuda_platform|cuda_dnn|cuda_blas|cuda_fft)"
    rb"|INFO: Created TensorFlow Lite XNNPACK delegate for CPU\.$)"
)


@contextlib.contextmanager
def held_stderr(noise: re.Pattern):
    """Hold fd 2; afterwards write back every line that does not match `noise`, in order."""
    try:
        saved = os.dup(2)
    except OSError:  # no stderr at all (a detached service): nothing to filter
        yield
        return
    with tempfile.TemporaryFile() as held:
        sys.stderr.flush()
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            kept = [line for line in held.read().splitlines(keepends=True) if not noise.match(line.rstrip())]
            if kept:
                os.write(2, b"".join(kept))
