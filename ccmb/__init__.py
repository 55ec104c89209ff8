"""ccmb: the data toolkit of the CCMB Chinese cross-modal benchmark."""

__version__ = "0.1.0"
