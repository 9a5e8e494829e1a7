"""impumae."""
