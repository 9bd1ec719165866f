"""Running images: the OCI runtime spec and the image user (no CLI here)."""
