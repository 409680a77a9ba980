"""What users plug in: objects named by import path, and the calls given up on after a timeout."""
