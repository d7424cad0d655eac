"""petridish: a laboratory for model organisms of misalignment."""

__version__ = "0.1.0"
