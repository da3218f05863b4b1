"""Storage: the only code that runs mdadm, cryptsetup, mkfs or mount."""
