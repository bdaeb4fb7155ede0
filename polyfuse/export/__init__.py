"""Export of a trained artifact: ONNX (fp32, int8) and torch.export, each verified before written."""
