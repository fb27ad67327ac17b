"""workflows of aiida-mad."""
