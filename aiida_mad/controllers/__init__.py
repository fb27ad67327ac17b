"""controllers of aiida-mad."""
