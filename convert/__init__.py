"""Training host side: data, models, training, quantization, Edge TPU compilation (needs TensorFlow)."""
