"""The core's own plugin modules, registered exactly like external plugins."""
