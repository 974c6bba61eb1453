"""Face analysis as a library: detection, 5- and 68-point landmarks, alignment, 3DMM coefficient estimation and
identity embeddings, on images and tensors. Used by the pipelines (through row adapters) and the benchmark."""
