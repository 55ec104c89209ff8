"""One parser per annotation format, shared by the datasets that use it."""
