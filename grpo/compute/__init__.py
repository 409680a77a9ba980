"""Where the numbers run: loading models (and the GGUF cache), precision, kernels (attention, packed linears), memory,
processes."""
