"""aiida-mad: MAD-style training sets for universal machine-learning potentials, built with AiiDA."""

__version__ = '0.1.0'
