"""The tiny digits models of the benchmarks: model (ComfyUI UNet wrapper), classifier and data,
training script, metrics, and the committed weights (``weights/``)."""
