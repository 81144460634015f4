"""Representative data for int8 calibration, and float-vs-int8 fidelity reports (needs TensorFlow)."""
