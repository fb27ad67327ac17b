"""data of aiida-mad."""
