"""A faithful double of onnxruntime-gpu on a Jetson, for the provider logic of edge/runtime/onnx.py.

Only what is absent here is faked: `get_available_providers()` reports what NVIDIA's onnxruntime-gpu
wheel reports (TensorRT, CUDA, CPU), and `InferenceSession` records its construction arguments,
then runs the model on a real CPU session. `get_providers()` answers as onnxruntime does: the
providers that were registered, in order, less any that `failing` says could not start (onnxruntime
then runs without them and logs why). The arguments are checked as onnxruntime checks them: names
it does not list, or options that are not dicts, are errors.
"""

from __future__ import annotations

import onnxruntime

GPU_PROVIDERS = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]


class FakeGpuOnnxRuntime:
    def __init__(self, failing: tuple[str, ...] = ()):
        self.failing = set(failing)
        self.sessions: list[dict] = []  # one record per InferenceSession(...)
        self.real_session = onnxruntime.InferenceSession

    def get_available_providers(self) -> list[str]:
        return list(GPU_PROVIDERS)

    def install(self, monkeypatch) -> FakeGpuOnnxRuntime:
        fake = self

        class InferenceSession:
            def __init__(
                self, path_or_bytes, sess_options=None, providers=None, provider_options=None, **kwargs
            ):
                names = [p[0] if isinstance(p, tuple) else p for p in providers or []]
                for p in providers or []:
                    name, options = p if isinstance(p, tuple) else (p, {})
                    if name not in GPU_PROVIDERS:
                        raise ValueError(f"Specified provider '{name}' is not in available provider names.")
                    if not isinstance(options, dict):
                        raise ValueError("provider options must be a dict")
                fake.sessions.append({"providers": providers, "sess_options": sess_options, "kwargs": kwargs})
                self._real = fake.real_session(
                    path_or_bytes, sess_options=sess_options, providers=["CPUExecutionProvider"]
                )
                started = [n for n in names if n not in fake.failing]
                # onnxruntime always keeps the CPU provider as the last resort
                self._providers = (
                    started if "CPUExecutionProvider" in started else [*started, "CPUExecutionProvider"]
                )

            def get_providers(self):
                return list(self._providers)

            def __getattr__(self, name):  # get_inputs, get_outputs, run, get_modelmeta: the real session's
                return getattr(self._real, name)

        monkeypatch.setattr(onnxruntime, "get_available_providers", self.get_available_providers)
        monkeypatch.setattr(onnxruntime, "InferenceSession", InferenceSession)
        return self
