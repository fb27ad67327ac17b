"""calculations of aiida-mad."""
