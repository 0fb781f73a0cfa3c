"""musicdiff_lib: the library behind the musicdiff book.

Text-conditioned music generation with diffusion models on mel spectrograms.
Each module is one concept and names the chapter that teaches it.
"""

__version__ = "0.1.0"
