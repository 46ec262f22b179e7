"""Report generators: comparison tables, explanation galleries."""
