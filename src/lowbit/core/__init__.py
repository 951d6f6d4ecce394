"""Pure tensor maths: quantization parameters, (de)quantization, error metrics. No nn.Module, no model."""
