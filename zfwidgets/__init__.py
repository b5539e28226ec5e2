"""zfwidgets."""
