"""edge: blood-cell classification on the microscope (device side; never imports TensorFlow)."""

__version__ = "0.1.0"
