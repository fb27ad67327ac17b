"""export of aiida-mad."""
