"""fastddpm.nets (being built)."""
