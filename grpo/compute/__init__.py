"""Where the numbers run: loading models, precision, kernels (attention, packed linears), memory, processes."""
