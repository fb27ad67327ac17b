"""parsers of aiida-mad."""
