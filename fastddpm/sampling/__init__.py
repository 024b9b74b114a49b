"""fastddpm.sampling (being built)."""
