"""workflows protocols of aiida-mad."""
