"""fastddpm.runtime (being built)."""
