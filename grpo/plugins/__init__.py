"""What users plug in and how we find it: tables of named entries (registry.py), objects named by import path (importing.py), the calls given up on after a timeout (abandoned.py)."""
