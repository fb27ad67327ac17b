"""Structure generators and checks: pure functions on ``ase.Atoms``.

Nothing in this sub-package imports AiiDA; every random draw goes through an explicit ``numpy.random.Generator``
so that the same input and seed give the same structure.
"""
