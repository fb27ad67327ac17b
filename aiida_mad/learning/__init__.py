"""Pure numerical pieces of learning: committee statistics, candidate selection and DIRECT downsampling.

Nothing in this sub-package imports AiiDA; the work chains and calcfunctions wrap these functions. Units are the
project's: eV, Å, eV/atom, eV/Å, eV/Å³.
"""
