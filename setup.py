"""Only for the optional C kernels of edge.labtables; everything else is in pyproject.toml.

`optional=True`: where no C compiler (or no Python headers) is at hand, the install goes on without
the extension and edge.labtables does the same passes in NumPy, with the same bytes.
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("edge._lab_kernels", ["edge/_lab_kernels.c"], optional=True)])
